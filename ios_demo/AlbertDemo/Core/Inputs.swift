import Foundation

/// The model inputs of one text, keyed by canonical input name.
struct Encoding {
    let inputIds: [Int]
    let attentionMask: [Int]
    let tokenTypeIds: [Int]

    func values(_ canonicalName: String) -> [Int]? {
        switch canonicalName {
        case ManifestValues.inputIds: return inputIds
        case ManifestValues.attentionMask: return attentionMask
        case ManifestValues.tokenTypeIds: return tokenTypeIds
        default: return nil
        }
    }

    /// A tokenizer's ids with their special tokens ([CLS] ... [SEP]) under the pipeline's contract: truncated to
    /// maxLength keeping the final [SEP], right-padded to maxLength with padId (`pad`, static files) or exactly the
    /// tokens (dynamic files). One sequence: token types 0.
    static func fixedLength(_ tokenIds: [Int], maxLength: Int, pad: Bool, padId: Int) -> Encoding {
        var ids = tokenIds
        if ids.count > maxLength, let last = ids.last {
            ids = Array(ids.prefix(maxLength - 1)) + [last]
        }
        let length = ids.count
        let padding = pad ? max(0, maxLength - length) : 0
        return Encoding(
            inputIds: ids + Array(repeating: padId, count: padding),
            attentionMask: Array(repeating: 1, count: length) + Array(repeating: CoreRules.padAttentionMask, count: padding),
            tokenTypeIds: Array(repeating: 0, count: length) + Array(repeating: CoreRules.padTokenTypeId, count: padding)
        )
    }
}

/// One input of one inference, ready for a runtime: the manifest's name and dtype, the actual shape (the dynamic
/// dimension set to this text's length) and the values. The runtime adapters only copy these into their tensors.
struct InputTensor {
    let spec: TensorSpec
    let shape: [Int]
    let values: [Int]

    var name: String { spec.name }
    var dtype: String { spec.dtype }

    /// The values in the manifest's dtype, native byte order (LiteRT's `copy(_:toInputAt:)`).
    func data() -> Data {
        if dtype == ManifestValues.dtypeInt64 {
            return values.map { Int64($0) }.withUnsafeBufferPointer { Data(buffer: $0) }
        }
        return values.map { Int32($0) }.withUnsafeBufferPointer { Data(buffer: $0) }
    }
}

/// The shape contract: what each model file is fed for one encoding, exactly as the pipeline's Python runners feed
/// it (pipeline/runtimes/base.py `fit_length`, pipeline/shapes.py `pad`): inputs in the manifest's order, each with
/// the manifest's dtype; a dynamic file gets the encoding as is ([1, S]); a static file gets exactly its declared
/// shape, a shorter encoding right-padded (input_ids with the pad id, attention_mask and token_type_ids with 0); an
/// encoding longer than the file takes is refused, never cut.
enum ModelInputs {
    static func bytesPerValue(_ dtype: String) throws -> Int {
        switch dtype {
        case ManifestValues.dtypeInt64: return 8
        case ManifestValues.dtypeInt32: return 4
        default: throw BundleError.invalid("input dtype '\(dtype)' is not one this app feeds (int64, int32)")
        }
    }

    static func build(_ file: ModelFile, _ encoding: Encoding, maxLength: Int, padId: Int) throws -> [InputTensor] {
        guard try !Runtime.of(file).takesText else { throw BundleError.invalid("\(file.path) takes text, not token ids") }
        let length = encoding.inputIds.count
        guard encoding.attentionMask.count == length, encoding.tokenTypeIds.count == length else {
            throw BundleError.invalid("encoding arrays differ in length")
        }
        guard length >= 1 else { throw BundleError.invalid("an empty encoding: every text has at least [CLS]") }
        return try file.inputs.map { spec -> InputTensor in
            _ = try bytesPerValue(spec.dtype)  // an unsupported dtype fails here, before any runtime call
            guard let values = encoding.values(spec.canonicalName) else {
                throw BundleError.invalid("\(file.path): model input '\(spec.name)' is not one the tokenizer produces")
            }
            guard !spec.shape.isEmpty, spec.shape.filter({ $0 == CoreRules.dynamicDim }).count <= 1 else {
                throw BundleError.invalid("\(file.path): input '\(spec.name)' has shape \(spec.shape): one sequence dimension expected")
            }
            if spec.dynamic {
                guard length <= maxLength else { throw tooLong(file, length, maxLength) }
                let shape = spec.shape.map { $0 == CoreRules.dynamicDim ? length : $0 }
                try checkCount(file, spec, shape, length)
                return InputTensor(spec: spec, shape: shape, values: values)
            }
            let staticLength = spec.shape[spec.shape.count - 1]
            guard length <= staticLength else { throw tooLong(file, length, staticLength) }
            let filler: Int
            switch spec.canonicalName {
            case ManifestValues.inputIds: filler = padId
            case ManifestValues.attentionMask: filler = CoreRules.padAttentionMask
            default: filler = CoreRules.padTokenTypeId
            }
            try checkCount(file, spec, spec.shape, staticLength)
            return InputTensor(spec: spec, shape: spec.shape, values: values + Array(repeating: filler, count: staticLength - length))
        }
    }

    private static func checkCount(_ file: ModelFile, _ spec: TensorSpec, _ shape: [Int], _ count: Int) throws {
        guard shape.reduce(1, *) == count else {
            throw BundleError.invalid("\(file.path): input '\(spec.name)' has \(count) values, its shape \(spec.shape) takes another count")
        }
    }

    private static func tooLong(_ file: ModelFile, _ length: Int, _ max: Int) -> BundleError {
        BundleError.invalid("\(file.path): input length \(length) exceeds the model's maximum \(max) tokens: truncate the text to max_length tokens before running it")
    }
}

/// LiteRT binds inputs by position; runtimes rename and reorder them, so the manifest's inputs are matched to the
/// interpreter's input tensors by name: the tensor named exactly like the manifest input, else the one whose name
/// contains its canonical name (`serving_default_input_ids:0` for `input_ids`).
enum LiteRTBinding {
    /// For each input of `file` (manifest order), the index of its interpreter input among `tensorNames`.
    static func indices(_ file: ModelFile, tensorNames: [String]) throws -> [Int] {
        let found = try file.inputs.map { spec -> Int in
            guard let index = tensorNames.firstIndex(of: spec.name)
                ?? tensorNames.firstIndex(where: { $0.contains(spec.canonicalName) }) else {
                throw BundleError.invalid("\(file.path): no input tensor named like '\(spec.name)' in \(tensorNames)")
            }
            return index
        }
        guard Set(found).count == found.count, found.count == tensorNames.count else {
            throw BundleError.invalid("\(file.path): manifest inputs \(file.inputs.map { $0.name }) do not bind one-to-one to the tensors \(tensorNames)")
        }
        return found
    }

    /// `inputs` (manifest order) rearranged into interpreter order.
    static func ordered(_ inputs: [InputTensor], _ indices: [Int]) throws -> [InputTensor] {
        guard inputs.count == indices.count else { throw BundleError.invalid("\(inputs.count) inputs for \(indices.count) bindings") }
        var byIndex = [InputTensor?](repeating: nil, count: inputs.count)
        for (input, index) in zip(inputs, indices) { byIndex[index] = input }
        return byIndex.compactMap { $0 }
    }
}

/// A runtime's output tensor to float logits; an int8 / uint8 tensor is dequantized with its own parameters.
enum Outputs {
    static func decode(_ data: Data, dtype: String, count: Int, scale: Float = 0, zeroPoint: Int = 0) throws -> [Float] {
        let bytes = [UInt8](data)
        switch dtype {
        case ManifestValues.dtypeFloat32:  // native byte order, like the tensor's own buffer
            guard bytes.count >= 4 * count else { throw BundleError.invalid("\(bytes.count) bytes for \(count) float32 values") }
            return bytes.withUnsafeBytes { raw in (0..<count).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) } }
        case ManifestValues.dtypeInt8:
            return bytes.prefix(count).map { Float(Int(Int8(bitPattern: $0)) - zeroPoint) * scale }
        case ManifestValues.dtypeUint8:
            return bytes.prefix(count).map { Float(Int($0) - zeroPoint) * scale }
        default:
            throw BundleError.invalid("output dtype '\(dtype)' is not supported (float32, int8, uint8)")
        }
    }
}
