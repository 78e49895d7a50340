package org.pipeline.demo.core

import org.pipeline.demo.tokenizer.Encoding
import org.pipeline.demo.tokenizer.Json
import org.pipeline.demo.tokenizer.Tokenizer

/** The tokenizer module's kind for a SentencePiece (Unigram) tokenizer.json; the manifest says sentencepiece. */
private const val TOKENIZER_MODULE_UNIGRAM = "unigram"

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

    fun int(root: Any?, path: String): Int = integer(get(root, path), path).toInt()

    fun long(root: Any?, path: String): Long = integer(get(root, path), path)

    fun double(root: Any?, path: String): Double =
        (get(root, path) as? Number)?.toDouble() ?: throw IllegalStateException("'$path' is not a number")

    fun bool(root: Any?, path: String): Boolean =
        get(root, path) as? Boolean ?: throw IllegalStateException("'$path' is not true or false")

    fun map(root: Any?, path: String): Map<*, *> =
        get(root, path) as? Map<*, *> ?: throw IllegalStateException("'$path' is not an object")

    fun ints(root: Any?, path: String): IntArray =
        list(root, path).map { integer(it, path).toInt() }.toIntArray()

    /** A JSON integer (Json reads integer literals as Long); 3.0 or "3" are errors, not silently converted. */
    private fun integer(value: Any?, path: String): Long =
        value as? Long ?: (value as? Int)?.toLong() ?: throw IllegalStateException("'$path' is not an integer: $value")
}

/** One input or output of a model file as the manifest declares it; `shape` may hold CoreRules.DYNAMIC_DIM. */
data class TensorSpec(val name: String, val shape: List<Long>, val dtype: String) {
    /** input_ids / attention_mask / token_type_ids: the canonical name contained in the runtime's tensor name. */
    val canonicalName: String get() = ManifestValues.INPUT_NAMES.firstOrNull { name.contains(it) } ?: name

    /** Takes any length (a dynamic dimension), else exactly `shape`. */
    val dynamic: Boolean get() = CoreRules.DYNAMIC_DIM in shape
}

/** The runtime a file runs in, from files[].runtime: what the app opens it with. */
enum class Runtime(val manifestName: String, val takesText: Boolean) {
    EXECUTORCH(ManifestValues.RUNTIME_EXECUTORCH, false),
    LITERT(ManifestValues.RUNTIME_LITERT, false),
    MEDIAPIPE(ManifestValues.RUNTIME_MEDIAPIPE, true);

    companion object {
        fun of(file: ModelFile): Runtime = entries.firstOrNull { it.manifestName == file.runtime }
            ?: throw IllegalArgumentException("${file.path}: unknown runtime '${file.runtime}' " +
                "(this app runs ${entries.joinToString { it.manifestName }})")
    }
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

    /** The name of the copy in app storage (runtimes load from a file path): a new build's file gets a new name. */
    val storageName: String get() = "${sha256.take(16)}-$path"
}

/** manifest.json, with everything the app needs, parsed once. `readAsset` reads another file of the bundle folder. */
class ModelBundle(manifestText: String, readAsset: (String) -> String) {
    val manifest: Any? = Json.parse(manifestText)
    val schemaVersion = JsonPath.int(manifest, ManifestKeys.SCHEMA_VERSION)

    init {
        check(schemaVersion == CoreRules.SCHEMA_VERSION) {
            "manifest schema_version $schemaVersion: this app reads version ${CoreRules.SCHEMA_VERSION}"
        }
    }

    val target = JsonPath.string(manifest, ManifestKeys.TARGET)
    val modelName = JsonPath.string(manifest, ManifestKeys.MODEL_NAME)
    /** The longest input any file takes (a dynamic file: its bound; a static file: its length). */
    val maxLength = JsonPath.int(manifest, ManifestKeys.MODEL_MAX_LENGTH)
    val numLabels = JsonPath.int(manifest, ManifestKeys.MODEL_NUM_LABELS)
    val tokenizerKind = JsonPath.string(manifest, ManifestKeys.TOKENIZER_KIND)
    val tokenizerFile = JsonPath.string(manifest, ManifestAssetKeys.TOKENIZER_FILE)
    val tokenizerMaxLength = JsonPath.int(manifest, ManifestKeys.TOKENIZER_MAX_LENGTH)
    /** input_ids filler when a shorter encoding is padded for a static file; null (no pad token) pads with 0 like
     *  pipeline/shapes.py `pad`. */
    val padId: Int = when (val id = JsonPath.get(manifest, ManifestKeys.TOKENIZER_PAD_ID)) {
        null -> 0
        is Long -> id.toInt()
        else -> throw IllegalStateException("'${ManifestKeys.TOKENIZER_PAD_ID}' is not an integer: $id")
    }
    /** Dynamic shape contract: feed exactly the tokens of a text (any length 1..maxLength), no padding. */
    val dynamicLength = JsonPath.string(manifest, ManifestKeys.SHAPES) == ManifestValues.SHAPES_DYNAMIC
    val labels: List<String> = Json.parse(readAsset(JsonPath.string(manifest, ManifestAssetKeys.LABELS)))
        .let { it as? List<*> ?: throw IllegalStateException("labels file is not a JSON list") }
        .map { it as? String ?: throw IllegalStateException("labels file holds a non-string: $it") }
    val goldenFile = JsonPath.string(manifest, ManifestAssetKeys.GOLDEN)
    val files: List<ModelFile> = JsonPath.list(manifest, ManifestKeys.FILES).map { f ->
        ModelFile(
            path = JsonPath.string(f, JsonPath.leaf(ManifestAssetKeys.FILE_PATH)),
            runtime = JsonPath.string(f, JsonPath.leaf(ManifestKeys.FILE_RUNTIME)),
            precision = JsonPath.string(f, JsonPath.leaf(ManifestKeys.FILE_PRECISION)),
            bytes = JsonPath.long(f, JsonPath.leaf(ManifestKeys.FILE_BYTES)),
            sha256 = JsonPath.string(f, JsonPath.leaf(ManifestKeys.FILE_SHA256)),
            passed = JsonPath.bool(f, JsonPath.leaf(ManifestKeys.FILE_PASSED)),
            inputs = JsonPath.list(f, JsonPath.leaf(ManifestKeys.FILE_INPUTS)).map { tensor(it, input = true) },
            outputs = JsonPath.list(f, JsonPath.leaf(ManifestKeys.FILE_OUTPUTS)).map { tensor(it, input = false) },
        )
    }

    init {
        check(labels.size == numLabels) { "labels has ${labels.size} names, the model $numLabels classes" }
    }

    /** The file at `path`, or an error naming it. */
    fun file(path: String): ModelFile =
        files.firstOrNull { it.path == path } ?: throw IllegalArgumentException("no file '$path' in the manifest")

    /** A tokenizer.json of another kind than the manifest says would give other ids: refuse it at start. */
    fun checkTokenizer(tokenizer: Tokenizer) {
        val same = tokenizer.kind == tokenizerKind ||
            tokenizerKind == ManifestValues.TOKENIZER_SENTENCEPIECE && tokenizer.kind == TOKENIZER_MODULE_UNIGRAM
        check(same) { "manifest says tokenizer $tokenizerKind, $tokenizerFile holds ${tokenizer.kind}" }
    }

    /** A text as the shape contract wants it: exactly its tokens (dynamic), or padded to max_length (static). */
    fun encode(tokenizer: Tokenizer, text: String): Encoding =
        tokenizer.encode(text, tokenizerMaxLength, pad = !dynamicLength)

    /** The input tensors of `file` for `encoding`, in the manifest's order (ModelInputs). */
    fun inputs(file: ModelFile, encoding: Encoding): List<InputTensor> = ModelInputs.build(file, encoding, maxLength, padId)

    private fun tensor(t: Any?, input: Boolean): TensorSpec {
        val name = if (input) ManifestKeys.INPUT_NAME else ManifestKeys.OUTPUT_NAME
        val shape = if (input) ManifestKeys.INPUT_SHAPE else ManifestKeys.OUTPUT_SHAPE
        val dtype = if (input) ManifestKeys.INPUT_DTYPE else ManifestKeys.OUTPUT_DTYPE
        return TensorSpec(
            JsonPath.string(t, JsonPath.leaf(name)),
            JsonPath.list(t, JsonPath.leaf(shape)).map { it as? Long ?: throw IllegalStateException("'$shape' holds $it") },
            JsonPath.string(t, JsonPath.leaf(dtype)),
        )
    }
}
