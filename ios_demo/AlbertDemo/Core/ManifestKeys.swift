// Every manifest.json / golden.json key and every resource path the app reads, in one place.
//
// Values are key paths: "a.b" is key b inside object a, "files[].path" is key path in every element of the
// files list. tests/test_apps.py parses this file and checks each path against a freshly built bundle, so a key
// the pipeline renames or drops fails CI instead of the app on a phone. Read keys only through these constants.
// The Android core's ManifestKeys.kt holds the same groups with the same values (tests/test_app_core_swift.py).

enum AssetPaths {
    /// The folder under AlbertDemo/Resources/ that `pipeline build --target ios` fills (a folder reference).
    static let modelDir = "model"
    static let manifest = "manifest.json"
}

/// Key paths inside manifest.json.
enum ManifestKeys {
    static let schemaVersion = "schema_version"
    static let target = "target"
    static let modelName = "model.name"
    static let modelMaxLength = "model.max_length"
    static let modelNumLabels = "model.num_labels"
    static let tokenizerKind = "tokenizer.kind"
    static let tokenizerFile = "tokenizer.file"
    static let tokenizerMaxLength = "tokenizer.max_length"
    static let tokenizerPadId = "tokenizer.pad_id"
    static let shapes = "shape_contract.shapes"
    static let labels = "labels"
    static let golden = "golden"
    static let files = "files"
    static let filePath = "files[].path"
    static let fileSha256 = "files[].sha256"
    static let fileBytes = "files[].bytes"
    static let fileRuntime = "files[].runtime"
    static let filePrecision = "files[].precision"
    static let filePassed = "files[].passed"
    static let fileInputs = "files[].inputs"
    static let inputName = "files[].inputs[].name"
    static let inputShape = "files[].inputs[].shape"
    static let inputDtype = "files[].inputs[].dtype"
    static let fileOutputs = "files[].outputs"
    static let outputName = "files[].outputs[].name"
    static let outputShape = "files[].outputs[].shape"
    static let outputDtype = "files[].outputs[].dtype"
}

/// Manifest keys whose values are paths of files in the same resource folder.
enum ManifestAssetKeys {
    static let tokenizerFile = ManifestKeys.tokenizerFile
    static let labels = ManifestKeys.labels
    static let golden = ManifestKeys.golden
    static let filePath = ManifestKeys.filePath
}

/// Key paths inside golden.json (the self-check vectors).
enum GoldenKeys {
    static let maxLength = "max_length"
    static let padding = "padding"
    static let tolerance = "tolerance"
    static let cases = "cases"
    static let caseText = "cases[].text"
    static let caseInputIds = "cases[].input_ids"
    static let caseAttentionMask = "cases[].attention_mask"
    static let caseTokenTypeIds = "cases[].token_type_ids"
    static let caseExpected = "cases[].expected"
}

/// Values the manifest uses for files[].runtime, tokenizer.kind, the shape contract and tensor dtypes.
enum ManifestValues {
    static let runtimeExecuTorch = "executorch"
    static let runtimeLiteRT = "litert"
    /// A `.mediapipe.tflite`: text in through MediaPipe Tasks' TextClassifier, probabilities out.
    static let runtimeMediaPipe = "mediapipe"
    static let tokenizerWordpiece = "wordpiece"
    static let tokenizerSentencepiece = "sentencepiece"
    static let shapesDynamic = "dynamic"
    static let paddingNone = "none"
    static let dtypeInt64 = "int64"
    static let dtypeInt32 = "int32"
    static let dtypeFloat32 = "float32"
    static let dtypeInt8 = "int8"
    static let dtypeUint8 = "uint8"
    static let inputIds = "input_ids"
    static let attentionMask = "attention_mask"
    static let tokenTypeIds = "token_type_ids"
    /// Canonical input names; a runtime's tensor name contains one of them (e.g. serving_default_input_ids:0).
    static let inputNames = [inputIds, attentionMask, tokenTypeIds]
}
