import Foundation

// The plain-Swift core of the app (Foundation only): manifest.json and golden.json, the shape contract, inputs and
// outputs, the self-check, MediaPipe text normalization and labels. It mirrors the Android core module
// (android_demo/core), which is compiled and tested against real builds on the pipeline's CI; this folder is only
// parsed there (tree-sitter-swift) and its constants compared with the Kotlin ones. The runtime adapters
// (Runners.swift, MediaPipeRunner.swift, TextTokenizer.swift) and the UI live outside Core/.

enum BundleError: LocalizedError {
    case missing(String)
    case invalid(String)

    var errorDescription: String? {
        switch self {
        case .missing(let what): return "missing: \(what)"
        case .invalid(let what): return "invalid: \(what)"
        }
    }
}

/// Reads a key path of ManifestKeys / GoldenKeys ("a.b"; "files[].path" relative to one list element).
enum JSONPath {
    /// The value at `path` inside `root` (NSNull for a JSON null); a missing key is an error that names the path.
    static func get(_ root: Any, _ path: String) throws -> Any {
        var node: Any = root
        for part in path.split(separator: ".") {
            let key = part.hasSuffix("[]") ? String(part.dropLast(2)) : String(part)
            guard let object = node as? [String: Any] else { throw BundleError.invalid("'\(path)': '\(key)' is not inside an object") }
            guard let value = object[key] else { throw BundleError.missing("'\(path)': key '\(key)'") }
            node = value
        }
        return node
    }

    /// "files[].inputs[].name" relative to an element of files[].inputs: "name".
    static func leaf(_ path: String) -> String {
        guard let range = path.range(of: "[].", options: .backwards) else { return path }
        return String(path[range.upperBound...])
    }

    static func string(_ root: Any, _ path: String) throws -> String {
        guard let value = try get(root, path) as? String else { throw BundleError.invalid("'\(path)' is not a string") }
        return value
    }

    /// A JSON integer; 3.5 is an error, not silently cut.
    static func int(_ root: Any, _ path: String) throws -> Int {
        try integer(get(root, path), path)
    }

    static func bool(_ root: Any, _ path: String) throws -> Bool {
        guard let value = try get(root, path) as? Bool else { throw BundleError.invalid("'\(path)' is not true or false") }
        return value
    }

    static func list(_ root: Any, _ path: String) throws -> [Any] {
        guard let value = try get(root, path) as? [Any] else { throw BundleError.invalid("'\(path)' is not a list") }
        return value
    }

    static func map(_ root: Any, _ path: String) throws -> [String: Any] {
        guard let value = try get(root, path) as? [String: Any] else { throw BundleError.invalid("'\(path)' is not an object") }
        return value
    }

    static func ints(_ root: Any, _ path: String) throws -> [Int] {
        try list(root, path).map { try integer($0, path) }
    }

    static func integer(_ value: Any, _ path: String) throws -> Int {
        guard let number = value as? NSNumber, Double(number.intValue) == number.doubleValue else {
            throw BundleError.invalid("'\(path)' is not an integer: \(value)")
        }
        return number.intValue
    }
}

/// One input or output of a model file as the manifest declares it; `shape` may hold CoreRules.dynamicDim.
struct TensorSpec: Hashable {
    let name: String
    let shape: [Int]
    let dtype: String

    /// input_ids / attention_mask / token_type_ids: the canonical name contained in the runtime's tensor name.
    var canonicalName: String { ManifestValues.inputNames.first { name.contains($0) } ?? name }

    /// Takes any length (a dynamic dimension), else exactly `shape`.
    var dynamic: Bool { shape.contains(CoreRules.dynamicDim) }
}

/// The runtime a file runs in, from files[].runtime: what the app opens it with.
enum Runtime: CaseIterable {
    case executorch
    case litert
    case mediapipe

    var manifestName: String {
        switch self {
        case .executorch: return ManifestValues.runtimeExecuTorch
        case .litert: return ManifestValues.runtimeLiteRT
        case .mediapipe: return ManifestValues.runtimeMediaPipe
        }
    }

    /// MediaPipe files take the text (their tokenizer is in the file); the others take token ids.
    var takesText: Bool { self == .mediapipe }

    static func of(_ file: ModelFile) throws -> Runtime {
        guard let runtime = allCases.first(where: { $0.manifestName == file.runtime }) else {
            let known = allCases.map { $0.manifestName }.joined(separator: ", ")
            throw BundleError.invalid("\(file.path): unknown runtime '\(file.runtime)' (this app runs \(known))")
        }
        return runtime
    }
}

struct ModelFile: Identifiable, Hashable {
    let path: String
    let runtime: String
    let precision: String
    let bytes: Int
    let sha256: String
    let passed: Bool
    let inputs: [TensorSpec]
    let outputs: [TensorSpec]

    var id: String { path }
    var title: String { "\(runtime) · \(precision)" }
}

/// manifest.json and the files it names, from the app bundle's model folder.
struct ModelBundle {
    let directory: URL
    let schemaVersion: Int
    let target: String
    let modelName: String
    /// The longest input any file takes (a dynamic file: its bound; a static file: its length).
    let maxLength: Int
    let numLabels: Int
    let tokenizerKind: String
    let tokenizerFile: String
    let tokenizerMaxLength: Int
    /// input_ids filler when a shorter encoding is padded for a static file; null (no pad token) pads with 0.
    let padId: Int
    /// Dynamic shape contract: feed exactly the tokens of a text (any length 1...maxLength), no padding.
    let dynamicLength: Bool
    let labels: [String]
    let goldenFile: String
    let files: [ModelFile]

    static func load(from bundle: Bundle = .main) throws -> ModelBundle {
        guard let directory = bundle.resourceURL?.appendingPathComponent(AssetPaths.modelDir),
              FileManager.default.fileExists(atPath: directory.appendingPathComponent(AssetPaths.manifest).path) else {
            throw BundleError.missing("\(AssetPaths.modelDir)/\(AssetPaths.manifest) in the app bundle: run `python -m pipeline build --target ios`")
        }
        return try ModelBundle(directory: directory)
    }

    init(directory: URL) throws {
        self.directory = directory
        let manifest = try ModelBundle.readJSON(directory.appendingPathComponent(AssetPaths.manifest))
        schemaVersion = try JSONPath.int(manifest, ManifestKeys.schemaVersion)
        guard schemaVersion == CoreRules.schemaVersion else {
            throw BundleError.invalid("manifest schema_version \(schemaVersion): this app reads version \(CoreRules.schemaVersion)")
        }
        target = try JSONPath.string(manifest, ManifestKeys.target)
        modelName = try JSONPath.string(manifest, ManifestKeys.modelName)
        maxLength = try JSONPath.int(manifest, ManifestKeys.modelMaxLength)
        numLabels = try JSONPath.int(manifest, ManifestKeys.modelNumLabels)
        tokenizerKind = try JSONPath.string(manifest, ManifestKeys.tokenizerKind)
        tokenizerFile = try JSONPath.string(manifest, ManifestAssetKeys.tokenizerFile)
        tokenizerMaxLength = try JSONPath.int(manifest, ManifestKeys.tokenizerMaxLength)
        let pad = try JSONPath.get(manifest, ManifestKeys.tokenizerPadId)
        padId = try pad is NSNull ? 0 : JSONPath.integer(pad, ManifestKeys.tokenizerPadId)
        dynamicLength = try JSONPath.string(manifest, ManifestKeys.shapes) == ManifestValues.shapesDynamic
        let labelsFile = try JSONPath.string(manifest, ManifestAssetKeys.labels)
        guard let names = try ModelBundle.readJSON(directory.appendingPathComponent(labelsFile)) as? [String] else {
            throw BundleError.invalid("\(labelsFile) is not a JSON list of names")
        }
        labels = names
        guard labels.count == numLabels else { throw BundleError.invalid("\(labels.count) labels for \(numLabels) classes") }
        goldenFile = try JSONPath.string(manifest, ManifestAssetKeys.golden)
        files = try JSONPath.list(manifest, ManifestKeys.files).map { file in
            ModelFile(
                path: try JSONPath.string(file, JSONPath.leaf(ManifestAssetKeys.filePath)),
                runtime: try JSONPath.string(file, JSONPath.leaf(ManifestKeys.fileRuntime)),
                precision: try JSONPath.string(file, JSONPath.leaf(ManifestKeys.filePrecision)),
                bytes: try JSONPath.int(file, JSONPath.leaf(ManifestKeys.fileBytes)),
                sha256: try JSONPath.string(file, JSONPath.leaf(ManifestKeys.fileSha256)),
                passed: try JSONPath.bool(file, JSONPath.leaf(ManifestKeys.filePassed)),
                inputs: try JSONPath.list(file, JSONPath.leaf(ManifestKeys.fileInputs)).map { try ModelBundle.tensor($0, input: true) },
                outputs: try JSONPath.list(file, JSONPath.leaf(ManifestKeys.fileOutputs)).map { try ModelBundle.tensor($0, input: false) }
            )
        }
    }

    func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

    /// The input tensors of `file` for `encoding`, in the manifest's order (ModelInputs).
    func inputs(_ file: ModelFile, _ encoding: Encoding) throws -> [InputTensor] {
        try ModelInputs.build(file, encoding, maxLength: maxLength, padId: padId)
    }

    static func readJSON(_ url: URL) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url), options: [.fragmentsAllowed])
    }

    private static func tensor(_ json: Any, input: Bool) throws -> TensorSpec {
        let name = input ? ManifestKeys.inputName : ManifestKeys.outputName
        let shape = input ? ManifestKeys.inputShape : ManifestKeys.outputShape
        let dtype = input ? ManifestKeys.inputDtype : ManifestKeys.outputDtype
        return TensorSpec(
            name: try JSONPath.string(json, JSONPath.leaf(name)),
            shape: try JSONPath.ints(json, JSONPath.leaf(shape)),
            dtype: try JSONPath.string(json, JSONPath.leaf(dtype))
        )
    }
}
