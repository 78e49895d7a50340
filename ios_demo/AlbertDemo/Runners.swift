import ExecuTorch
import Foundation
import TensorFlowLite

/// The model inputs of one text, each of length max_length, keyed by canonical input name.
struct Encoding {
    let inputIds: [Int]
    let attentionMask: [Int]
    let tokenTypeIds: [Int]

    func values(_ canonicalName: String) -> [Int]? {
        switch canonicalName {
        case "input_ids": return inputIds
        case "attention_mask": return attentionMask
        case "token_type_ids": return tokenTypeIds
        default: return nil
        }
    }
}

/// One loaded model file: `run` takes the tokenizer's encoding and returns the logits. A MediaPipe file
/// (`takesText`) takes the text itself: `classify(text)` returns probabilities in label order.
protocol ModelRunner {
    var file: ModelFile { get }
    func run(_ encoding: Encoding) throws -> [Float]
    var takesText: Bool { get }
    func classify(_ text: String) throws -> [Float]
}

extension ModelRunner {
    var takesText: Bool { false }
    func classify(_ text: String) throws -> [Float] {
        throw BundleError.invalid("\(file.path) takes token ids, not text")
    }
}

enum Runners {
    static func open(_ file: ModelFile, in bundle: ModelBundle, threads: Int = 2) throws -> ModelRunner {
        switch file.runtime {
        case ManifestValues.runtimeExecuTorch: return try ExecuTorchRunner(file: file, url: bundle.url(file.path))
        case ManifestValues.runtimeLiteRT: return try LiteRTRunner(file: file, url: bundle.url(file.path), threads: threads)
        case ManifestValues.runtimeMediaPipe: return try MediaPipeRunner(file: file, url: bundle.url(file.path))
        default: throw BundleError.invalid("\(file.path): unknown runtime '\(file.runtime)'")
        }
    }

    /// The manifest's shape with its dynamic dim (-1: any length up to max_length) set to this input's length.
    static func shape(_ spec: TensorSpec, count: Int) throws -> [Int] {
        let shape = spec.shape.map { $0 == -1 ? count : $0 }
        guard shape.reduce(1, *) == count else {
            throw BundleError.invalid("input '\(spec.name)' has \(count) values, its shape \(spec.shape) takes another count")
        }
        return shape
    }

    static func values(_ spec: TensorSpec, _ encoding: Encoding) throws -> [Int] {
        guard let values = encoding.values(spec.canonicalName) else {
            throw BundleError.invalid("model input '\(spec.name)' is not one the tokenizer produces")
        }
        return values
    }
}

/// ExecuTorch .pte: inputs are positional, in the manifest's order, with the manifest's dtype.
final class ExecuTorchRunner: ModelRunner {
    let file: ModelFile
    private let module: Module

    init(file: ModelFile, url: URL) throws {
        self.file = file
        module = Module(filePath: url.path)
        try module.load("forward")
    }

    func run(_ encoding: Encoding) throws -> [Float] {
        var inputs: [Value] = []
        for spec in file.inputs {
            let values = try Runners.values(spec, encoding)
            let shape = try Runners.shape(spec, count: values.count)
            switch spec.dtype {
            case ManifestValues.dtypeInt64:
                inputs.append(Value(Tensor<Int64>(values.map { Int64($0) }, shape: shape)))
            case ManifestValues.dtypeInt32:
                inputs.append(Value(Tensor<Int32>(values.map { Int32($0) }, shape: shape)))
            default:
                throw BundleError.invalid("\(file.path): input dtype \(spec.dtype) not supported")
            }
        }
        let outputs = try module.forward(inputs)
        guard let logits: Tensor<Float> = outputs.first?.tensor() else {
            throw BundleError.invalid("\(file.path): no float tensor output")
        }
        return logits.scalars()
    }
}

/// LiteRT .tflite: inputs are bound by tensor name (runtimes rename and reorder them), dtype from the manifest.
final class LiteRTRunner: ModelRunner {
    let file: ModelFile
    private let interpreter: Interpreter
    private var inputIndex: [TensorSpec: Int] = [:]

    init(file: ModelFile, url: URL, threads: Int) throws {
        self.file = file
        var options = Interpreter.Options()
        options.threadCount = threads
        interpreter = try Interpreter(modelPath: url.path, options: options)
        try interpreter.allocateTensors()
        let names = try (0..<interpreter.inputTensorCount).map { try interpreter.input(at: $0).name }
        for spec in file.inputs {
            guard let index = names.firstIndex(of: spec.name) ?? names.firstIndex(where: { $0.contains(spec.canonicalName) }) else {
                throw BundleError.invalid("\(file.path): no input tensor named like '\(spec.name)' in \(names)")
            }
            inputIndex[spec] = index
        }
    }

    func run(_ encoding: Encoding) throws -> [Float] {
        var resized = false
        for (spec, index) in inputIndex {  // a dynamic-length file (shape_signature [1, -1]) takes this text's length
            let shape = try Runners.shape(spec, count: try Runners.values(spec, encoding).count)
            if try interpreter.input(at: index).shape.dimensions != shape {
                try interpreter.resizeInput(at: index, to: TensorFlowLite.Tensor.Shape(shape))
                resized = true
            }
        }
        if resized { try interpreter.allocateTensors() }
        for (spec, index) in inputIndex {
            let values = try Runners.values(spec, encoding)
            let data: Data
            switch spec.dtype {
            case ManifestValues.dtypeInt64: data = values.map { Int64($0) }.withUnsafeBufferPointer { Data(buffer: $0) }
            case ManifestValues.dtypeInt32: data = values.map { Int32($0) }.withUnsafeBufferPointer { Data(buffer: $0) }
            default: throw BundleError.invalid("\(file.path): input dtype \(spec.dtype) not supported")
            }
            try interpreter.copy(data, toInputAt: index)
        }
        try interpreter.invoke()
        let output = try interpreter.output(at: 0)
        switch output.dataType {
        case .float32:
            return output.data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        case .int8:
            // a fully quantized model: dequantize with the tensor's own parameters
            guard let q = output.quantizationParameters else { throw BundleError.invalid("\(file.path): int8 output without scale") }
            return output.data.map { Float(Int(Int8(bitPattern: $0)) - q.zeroPoint) * q.scale }
        default:
            throw BundleError.invalid("\(file.path): output dtype \(output.dataType) not supported")
        }
    }
}
