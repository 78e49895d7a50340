package org.pipeline.demo

import org.pipeline.demo.tokenizer.Json

/** Reads a key path of ManifestKeys / GoldenKeys ("a.b", "files[].path" relative to one list element). */
object JsonPath {
    /** The value at `path` inside `root`; a missing key is an error that names the path. */
    fun get(root: Any?, path: String): Any? {
        var node = root
        for (part in path.split('.')) {
            val key = part.removeSuffix("[]")
            val obj = node as? Map<*, *> ?: throw IllegalStateException("'$path': '$key' is not inside an object")
            if (!obj.containsKey(key)) throw IllegalStateException("'$path': key '$key' missing")
            node = obj[key]
        }
        return node
    }

    /** For "files[].inputs[].name" relative to an element of files[].inputs: the last segment, "name". */
    fun leaf(path: String): String = path.substringAfterLast("[].")

    fun list(root: Any?, path: String): List<Any?> =
        get(root, path) as? List<Any?> ?: throw IllegalStateException("'$path' is not a list")

    fun string(root: Any?, path: String): String =
        get(root, path) as? String ?: throw IllegalStateException("'$path' is not a string")

    fun int(root: Any?, path: String): Int =
        (get(root, path) as? Number)?.toInt() ?: throw IllegalStateException("'$path' is not a number")
}

data class TensorSpec(val name: String, val shape: LongArray, val dtype: String) {
    /** input_ids / attention_mask / token_type_ids: the canonical name contained in the runtime's tensor name. */
    val canonicalName: String =
        ManifestValues.INPUT_NAMES.firstOrNull { name.contains(it) } ?: name
}

data class ModelFile(
    val path: String,
    val runtime: String,
    val precision: String,
    val bytes: Long,
    val sha256: String,
    val passed: Boolean,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
) {
    val title: String get() = "$runtime · $precision ($path)"
}

/** manifest.json, with everything the app needs, parsed once. */
class Bundle(manifestText: String, readAsset: (String) -> String) {
    val manifest: Any? = Json.parse(manifestText)
    val schemaVersion = JsonPath.int(manifest, ManifestKeys.SCHEMA_VERSION)
    val target = JsonPath.string(manifest, ManifestKeys.TARGET)
    val modelName = JsonPath.string(manifest, ManifestKeys.MODEL_NAME)
    val maxLength = JsonPath.int(manifest, ManifestKeys.MODEL_MAX_LENGTH)
    val numLabels = JsonPath.int(manifest, ManifestKeys.MODEL_NUM_LABELS)
    val tokenizerKind = JsonPath.string(manifest, ManifestKeys.TOKENIZER_KIND)
    val tokenizerFile = JsonPath.string(manifest, ManifestAssetKeys.TOKENIZER_FILE)
    val tokenizerMaxLength = JsonPath.int(manifest, ManifestKeys.TOKENIZER_MAX_LENGTH)
    /** Dynamic shape contract: feed exactly the tokens of a text (any length 1..maxLength), no padding. */
    val dynamicLength = JsonPath.string(manifest, ManifestKeys.SHAPES) == ManifestValues.SHAPES_DYNAMIC
    val labels: List<String> = Json.parse(readAsset(JsonPath.string(manifest, ManifestAssetKeys.LABELS)))
        .let { it as? List<*> ?: throw IllegalStateException("labels file is not a JSON list") }
        .map { it.toString() }
    val goldenFile = JsonPath.string(manifest, ManifestAssetKeys.GOLDEN)
    val files: List<ModelFile> = JsonPath.list(manifest, ManifestKeys.FILES).map { f ->
        ModelFile(
            path = JsonPath.string(f, JsonPath.leaf(ManifestAssetKeys.FILE_PATH)),
            runtime = JsonPath.string(f, JsonPath.leaf(ManifestKeys.FILE_RUNTIME)),
            precision = JsonPath.string(f, JsonPath.leaf(ManifestKeys.FILE_PRECISION)),
            bytes = (JsonPath.get(f, JsonPath.leaf(ManifestKeys.FILE_BYTES)) as Number).toLong(),
            sha256 = JsonPath.string(f, JsonPath.leaf(ManifestKeys.FILE_SHA256)),
            passed = JsonPath.get(f, JsonPath.leaf(ManifestKeys.FILE_PASSED)) == true,
            inputs = JsonPath.list(f, JsonPath.leaf(ManifestKeys.FILE_INPUTS)).map { tensor(it, input = true) },
            outputs = JsonPath.list(f, JsonPath.leaf(ManifestKeys.FILE_OUTPUTS)).map { tensor(it, input = false) },
        )
    }

    init {
        check(schemaVersion == 1) { "manifest schema_version $schemaVersion: this app reads version 1" }
        check(labels.size == numLabels) { "labels has ${labels.size} names, the model ${numLabels} classes" }
    }

    private fun tensor(t: Any?, input: Boolean): TensorSpec {
        val name = if (input) ManifestKeys.INPUT_NAME else ManifestKeys.OUTPUT_NAME
        val shape = if (input) ManifestKeys.INPUT_SHAPE else ManifestKeys.OUTPUT_SHAPE
        val dtype = if (input) ManifestKeys.INPUT_DTYPE else ManifestKeys.OUTPUT_DTYPE
        return TensorSpec(
            JsonPath.string(t, JsonPath.leaf(name)),
            JsonPath.list(t, JsonPath.leaf(shape)).map { (it as Number).toLong() }.toLongArray(),
            JsonPath.string(t, JsonPath.leaf(dtype)),
        )
    }
}
