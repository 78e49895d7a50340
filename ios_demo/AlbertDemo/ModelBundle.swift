import Foundation

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

    static func int(_ root: Any, _ path: String) throws -> Int {
        guard let value = try get(root, path) as? NSNumber else { throw BundleError.invalid("'\(path)' is not a number") }
        return value.intValue
    }

    static func list(_ root: Any, _ path: String) throws -> [Any] {
        guard let value = try get(root, path) as? [Any] else { throw BundleError.invalid("'\(path)' is not a list") }
        return value
    }

    static func ints(_ root: Any, _ path: String) throws -> [Int] {
        try list(root, path).map { ($0 as? NSNumber)?.intValue ?? 0 }
    }
}

struct TensorSpec: Hashable {
    let name: String
    let shape: [Int]
    let dtype: String

    /// input_ids / attention_mask / token_type_ids: the canonical name contained in the runtime's tensor name.
    var canonicalName: String { ManifestValues.inputNames.first { name.contains($0) } ?? name }
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
    let maxLength: Int
    let numLabels: Int
    let tokenizerKind: String
    let tokenizerFile: String
    let tokenizerMaxLength: Int
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
        guard schemaVersion == 1 else { throw BundleError.invalid("manifest schema_version \(schemaVersion): this app reads version 1") }
        target = try JSONPath.string(manifest, ManifestKeys.target)
        modelName = try JSONPath.string(manifest, ManifestKeys.modelName)
        maxLength = try JSONPath.int(manifest, ManifestKeys.modelMaxLength)
        numLabels = try JSONPath.int(manifest, ManifestKeys.modelNumLabels)
        tokenizerKind = try JSONPath.string(manifest, ManifestKeys.tokenizerKind)
        tokenizerFile = try JSONPath.string(manifest, ManifestAssetKeys.tokenizerFile)
        tokenizerMaxLength = try JSONPath.int(manifest, ManifestKeys.tokenizerMaxLength)
        dynamicLength = try JSONPath.string(manifest, ManifestKeys.shapes) == ManifestValues.shapesDynamic
        let labelsFile = try JSONPath.string(manifest, ManifestAssetKeys.labels)
        guard let names = try ModelBundle.readJSON(directory.appendingPathComponent(labelsFile)) as? [Any] else {
            throw BundleError.invalid("\(labelsFile) is not a JSON list")
        }
        labels = names.map { "\($0)" }
        guard labels.count == numLabels else { throw BundleError.invalid("\(labels.count) labels for \(numLabels) classes") }
        goldenFile = try JSONPath.string(manifest, ManifestAssetKeys.golden)
        files = try JSONPath.list(manifest, ManifestKeys.files).map { file in
            ModelFile(
                path: try JSONPath.string(file, JSONPath.leaf(ManifestAssetKeys.filePath)),
                runtime: try JSONPath.string(file, JSONPath.leaf(ManifestKeys.fileRuntime)),
                precision: try JSONPath.string(file, JSONPath.leaf(ManifestKeys.filePrecision)),
                bytes: try JSONPath.int(file, JSONPath.leaf(ManifestKeys.fileBytes)),
                sha256: try JSONPath.string(file, JSONPath.leaf(ManifestKeys.fileSha256)),
                passed: (try JSONPath.get(file, JSONPath.leaf(ManifestKeys.filePassed)) as? Bool) ?? false,
                inputs: try JSONPath.list(file, JSONPath.leaf(ManifestKeys.fileInputs)).map { try ModelBundle.tensor($0, input: true) },
                outputs: try JSONPath.list(file, JSONPath.leaf(ManifestKeys.fileOutputs)).map { try ModelBundle.tensor($0, input: false) }
            )
        }
    }

    func url(_ name: String) -> URL { directory.appendingPathComponent(name) }

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
