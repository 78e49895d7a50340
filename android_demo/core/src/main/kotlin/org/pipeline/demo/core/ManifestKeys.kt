package org.pipeline.demo.core

/**
 * Every manifest.json / golden.json key and every asset path the app reads, in one place.
 *
 * Values are key paths: "a.b" is key b inside object a, "files[].path" is key path in every element of the
 * files list. tests/test_apps.py parses this file and checks each path against a freshly built bundle, so a
 * key the pipeline renames or drops fails CI instead of the app on a phone. Read keys only through these
 * constants (JsonPath in ModelBundle.kt); never spell a key as a literal elsewhere. The iOS app's
 * ManifestKeys.swift holds the same groups with the same values (tests/test_app_core_swift.py).
 */
object AssetPaths {
    /** The folder under app/src/main/assets/ that `pipeline build --target android` fills. */
    const val MODEL_DIR = "model"
    const val MANIFEST = "manifest.json"
}

/** Key paths inside manifest.json. */
object ManifestKeys {
    const val SCHEMA_VERSION = "schema_version"
    const val TARGET = "target"
    const val MODEL_NAME = "model.name"
    const val MODEL_MAX_LENGTH = "model.max_length"
    const val MODEL_NUM_LABELS = "model.num_labels"
    const val TOKENIZER_KIND = "tokenizer.kind"
    const val TOKENIZER_FILE = "tokenizer.file"
    const val TOKENIZER_MAX_LENGTH = "tokenizer.max_length"
    const val TOKENIZER_PAD_ID = "tokenizer.pad_id"
    const val SHAPES = "shape_contract.shapes"
    const val LABELS = "labels"
    const val GOLDEN = "golden"
    const val FILES = "files"
    const val FILE_PATH = "files[].path"
    const val FILE_SHA256 = "files[].sha256"
    const val FILE_BYTES = "files[].bytes"
    const val FILE_RUNTIME = "files[].runtime"
    const val FILE_PRECISION = "files[].precision"
    const val FILE_PASSED = "files[].passed"
    const val FILE_INPUTS = "files[].inputs"
    const val INPUT_NAME = "files[].inputs[].name"
    const val INPUT_SHAPE = "files[].inputs[].shape"
    const val INPUT_DTYPE = "files[].inputs[].dtype"
    const val FILE_OUTPUTS = "files[].outputs"
    const val OUTPUT_NAME = "files[].outputs[].name"
    const val OUTPUT_SHAPE = "files[].outputs[].shape"
    const val OUTPUT_DTYPE = "files[].outputs[].dtype"
}

/** Manifest keys whose values are paths of files in the same asset folder. */
object ManifestAssetKeys {
    const val TOKENIZER_FILE = ManifestKeys.TOKENIZER_FILE
    const val LABELS = ManifestKeys.LABELS
    const val GOLDEN = ManifestKeys.GOLDEN
    const val FILE_PATH = ManifestKeys.FILE_PATH
}

/** Key paths inside golden.json (the self-check vectors). */
object GoldenKeys {
    const val MAX_LENGTH = "max_length"
    const val PADDING = "padding"
    const val TOLERANCE = "tolerance"
    const val CASES = "cases"
    const val CASE_TEXT = "cases[].text"
    const val CASE_INPUT_IDS = "cases[].input_ids"
    const val CASE_ATTENTION_MASK = "cases[].attention_mask"
    const val CASE_TOKEN_TYPE_IDS = "cases[].token_type_ids"
    const val CASE_EXPECTED = "cases[].expected"
}

/** Values the manifest uses for files[].runtime, tokenizer.kind, the shape contract and tensor dtypes. */
object ManifestValues {
    const val RUNTIME_EXECUTORCH = "executorch"
    const val RUNTIME_LITERT = "litert"
    /** A `.mediapipe.tflite`: text in through MediaPipe Tasks' TextClassifier, probabilities out. */
    const val RUNTIME_MEDIAPIPE = "mediapipe"
    const val TOKENIZER_WORDPIECE = "wordpiece"
    const val TOKENIZER_SENTENCEPIECE = "sentencepiece"
    const val SHAPES_DYNAMIC = "dynamic"
    const val PADDING_NONE = "none"
    const val DTYPE_INT64 = "int64"
    const val DTYPE_INT32 = "int32"
    const val DTYPE_FLOAT32 = "float32"
    const val DTYPE_INT8 = "int8"
    const val DTYPE_UINT8 = "uint8"
    const val INPUT_IDS = "input_ids"
    const val ATTENTION_MASK = "attention_mask"
    const val TOKEN_TYPE_IDS = "token_type_ids"
    /** Canonical input names; a runtime's tensor name contains one of them (e.g. serving_default_input_ids:0). */
    val INPUT_NAMES = listOf(INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)
}
