package org.pipeline.demo.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.pipeline.demo.tokenizer.Encoding
import org.pipeline.demo.tokenizer.Json
import org.pipeline.demo.tokenizer.Tokenizer

/**
 * The core on the JVM, for tests/test_app_core.py: one command, one JSON request file, one JSON answer on stdout.
 *
 *     java -cp core.jar:kotlin-stdlib.jar org.pipeline.demo.core.AppCoreCliKt <command> request.json
 *
 * inputs     {"bundle": dir, "rows": [{"text": ...} | {"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}],
 *             "tensor_names": {path: [LiteRT input tensor names, by index]}}
 *            -> {"runtimes": {path: name | {"error"}}, "rows": [{"encoding": {...}, "inputs": {path: {"arrays": [...],
 *                "interpreter_order": [...]} | {"error": ...}}}]}   (what each ids-in file is fed, as the adapters feed it)
 * selfcheck  {"bundle": dir, "outputs": {path: [{"inputs": [[...] per input] | "text": ..., "output": [...]}]}}
 *            -> {"results": [{"subject", "passed", "detail", "worst"}], "summary": ...}   (runners replay `outputs`)
 * normalize  {"kind": ..., "texts": [...]} -> [...]
 * predict    {"bundle": dir, "logits": [[...]], "categories": [[[index, score], ...]]} -> {"logits": [...], "categories": [...]}
 * decode     {"items": [{"hex", "dtype", "count", "scale", "zero_point"}]} -> [[...] | {"error"}]
 * json       {"documents": [text, ...]} -> [{"value": Json.write(Json.parse(text))} | {"error": ...}]
 */
fun main(args: Array<String>) {
    if (args.size != 2) {
        System.err.println("usage: AppCoreCli <inputs|selfcheck|normalize|predict|decode|json> <request.json>")
        kotlin.system.exitProcess(2)
    }
    val request = Json.parse(File(args[1]).readText(Charsets.UTF_8)) as Map<*, *>
    val answer: Any? = when (args[0]) {
        "inputs" -> inputs(request)
        "selfcheck" -> selfCheck(request)
        "normalize" -> (request["texts"] as List<*>).map { MediaPipeText.normalize(it as String, request["kind"] as String) }
        "predict" -> predict(request)
        "decode" -> decode(request)
        "json" -> (request["documents"] as List<*>).map { doc ->
            try { mapOf("value" to Json.write(Json.parse(doc as String))) } catch (e: IllegalArgumentException) { mapOf("error" to e.message) }
        }
        else -> { System.err.println("unknown command ${args[0]}"); kotlin.system.exitProcess(2) }
    }
    System.out.write(Json.write(answer).toByteArray(Charsets.UTF_8))
    System.out.flush()
}

private fun loadBundle(request: Map<*, *>): Pair<ModelBundle, File> {
    val dir = File(request["bundle"] as String)
    return ModelBundle(File(dir, AssetPaths.MANIFEST).readText(Charsets.UTF_8)) { File(dir, it).readText(Charsets.UTF_8) } to dir
}

private fun ints(value: Any?): IntArray = (value as List<*>).map { (it as Long).toInt() }.toIntArray()

private fun encodingJson(e: Encoding) =
    mapOf("input_ids" to e.inputIds, "attention_mask" to e.attentionMask, "token_type_ids" to e.tokenTypeIds)

private fun errorOf(e: Exception) = mapOf("error" to "${e::class.simpleName}: ${e.message}")

private fun hex(buffer: ByteBuffer): String = buildString { while (buffer.hasRemaining()) append("%02x".format(buffer.get())) }

private fun inputs(request: Map<*, *>): Any {
    val (bundle, dir) = loadBundle(request)
    val tokenizer = Tokenizer.fromJson(File(dir, bundle.tokenizerFile).readText(Charsets.UTF_8))
    bundle.checkTokenizer(tokenizer)
    val tensorNames = (request["tensor_names"] as? Map<*, *>).orEmpty()
    val runtimes = bundle.files.associate { file ->
        file.path to try { Runtime.of(file).manifestName } catch (e: Exception) { errorOf(e) }
    }
    val rows = (request["rows"] as List<*>).map { row ->
        row as Map<*, *>
        val encoding = (row["text"] as? String)?.let { bundle.encode(tokenizer, it) }
            ?: Encoding(ints(row["input_ids"]), ints(row["attention_mask"]), ints(row["token_type_ids"]))
        val perFile = bundle.files.filter { runCatching { !Runtime.of(it).takesText }.getOrDefault(true) }.associate { file ->
            file.path to try {
                val built = bundle.inputs(file, encoding)
                val arrays = built.map {
                    mapOf("name" to it.name, "dtype" to it.dtype, "shape" to it.shape, "values" to it.values,
                        "longs" to it.longs(), "hex" to hex(it.toBuffer()))
                }
                val names = tensorNames[file.path] as? List<*>
                if (names == null) mapOf("arrays" to arrays)
                else mapOf("arrays" to arrays, "interpreter_order" to
                    LiteRtBinding.ordered(built, LiteRtBinding.indices(file, names.map { it as String })).map { it.name })
            } catch (e: Exception) {
                errorOf(e)
            }
        }
        mapOf("encoding" to encodingJson(encoding), "inputs" to perFile)
    }
    return mapOf("runtimes" to runtimes, "rows" to rows)
}

/** A runner that answers with recorded outputs, found by exactly the inputs (or text) it is given. */
private class ReplayRunner(override val file: ModelFile, private val entries: List<Map<*, *>>) : ModelRunner {
    override fun forward(inputs: List<InputTensor>): FloatArray {
        val fed = inputs.map { it.values.toList() }
        val entry = entries.firstOrNull { e -> (e["inputs"] as? List<*>)?.map { ints(it).toList() } == fed }
            ?: throw IllegalStateException("no recorded output for inputs ${fed.map { it.take(8) }}")
        return floats(entry["output"])
    }

    override fun classify(text: String): FloatArray =
        floats((entries.firstOrNull { it["text"] == text } ?: throw IllegalStateException("no recorded output for text"))["output"])

    private fun floats(value: Any?) = (value as List<*>).map { (it as? Number)?.toFloat() ?: Float.NaN }.toFloatArray()
}

private fun selfCheck(request: Map<*, *>): Any {
    val (bundle, dir) = loadBundle(request)
    val tokenizer = Tokenizer.fromJson(File(dir, bundle.tokenizerFile).readText(Charsets.UTF_8))
    val outputs = request["outputs"] as Map<*, *>
    val check = SelfCheck(bundle, File(dir, bundle.goldenFile).readText(Charsets.UTF_8))
    val results = check.run(tokenizer) { file ->
        val entries = outputs[file.path] as? List<*> ?: throw IllegalStateException("runtime refused to load ${file.path}")
        ReplayRunner(file, entries.map { it as Map<*, *> })
    }
    return mapOf(
        "results" to results.map { mapOf("subject" to it.subject, "passed" to it.passed, "detail" to it.detail, "worst" to it.worst) },
        "summary" to SelfCheck.summary(results),
    )
}

private fun predict(request: Map<*, *>): Any {
    val (bundle, _) = loadBundle(request)
    val file = bundle.files.first { !Runtime.of(it).takesText }
    val logits = (request["logits"] as List<*>).map { row ->
        val p = Prediction.fromLogits((row as List<*>).map { (it as Number).toFloat() }.toFloatArray(), bundle.labels)
        mapOf("probabilities" to p.probabilities.toList(), "best" to p.best, "label" to p.label, "report" to p.report(file, 1.25, 2.5))
    }
    val categories = (request["categories"] as List<*>).map { row ->
        try {
            val pairs = (row as List<*>).map { c -> (c as List<*>).let { (it[0] as Long).toInt() to (it[1] as Number).toFloat() } }
            val p = Prediction.fromProbabilities(Probabilities.inLabelOrder(pairs, bundle.numLabels), bundle.labels)
            mapOf("probabilities" to p.probabilities.toList(), "label" to p.label)
        } catch (e: IllegalArgumentException) {
            errorOf(e)
        }
    }
    return mapOf("labels" to bundle.labels, "logits" to logits, "categories" to categories)
}

private fun decode(request: Map<*, *>): Any = (request["items"] as List<*>).map { item ->
    item as Map<*, *>
    try {
        val bytes = (item["hex"] as String).chunked(2).map { it.toInt(16).toByte() }.toByteArray()
        val buffer = ByteBuffer.allocateDirect(bytes.size).order(ByteOrder.nativeOrder()).put(bytes)
        Outputs.decode(buffer, item["dtype"] as String, (item["count"] as Long).toInt(),
            (item["scale"] as? Number)?.toFloat() ?: 0f, (item["zero_point"] as? Long)?.toInt() ?: 0).toList()
    } catch (e: IllegalArgumentException) {
        errorOf(e)
    }
}
