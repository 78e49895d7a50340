package org.pipeline.demo

import android.app.Activity
import android.graphics.Color
import android.os.Bundle as AndroidBundle
import android.os.SystemClock
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import java.io.File
import java.util.concurrent.Executors
import kotlin.math.exp
import org.pipeline.demo.tokenizer.Tokenizer

/**
 * The demo screen: a text field, a runtime · precision picker filled from manifest.json, the predicted label with
 * the probability of every label, the latency of tokenization and inference, and the self-check result.
 */
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private lateinit var bundle: Bundle
    private lateinit var tokenizer: Tokenizer
    private var runner: ModelRunner? = null

    private lateinit var input: EditText
    private lateinit var picker: Spinner
    private lateinit var result: TextView
    private lateinit var selfCheck: TextView

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        buildViews()
        worker.execute {
            try {
                bundle = Bundle(readAsset(AssetPaths.MANIFEST), ::readAsset)
                tokenizer = Tokenizer.fromJson(readAsset(bundle.tokenizerFile))
                check(tokenizer.kind == bundle.tokenizerKind || bundle.tokenizerKind == "sentencepiece" && tokenizer.kind == "unigram") {
                    "manifest says tokenizer ${bundle.tokenizerKind}, tokenizer.json holds ${tokenizer.kind}"
                }
                runOnUiThread { onBundleLoaded() }
                runSelfCheck()
            } catch (e: Exception) {
                runOnUiThread { selfCheck.text = "Cannot load the bundled model: ${e.message}" ; selfCheck.setTextColor(Color.RED) }
            }
        }
    }

    override fun onDestroy() {
        worker.execute { runner?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    private fun readAsset(name: String): String =
        assets.open("${AssetPaths.MODEL_DIR}/$name").use { it.readBytes().toString(Charsets.UTF_8) }

    /** Runtimes load from files: copy the asset once into app storage. */
    private fun modelPath(file: ModelFile): File {
        val out = File(filesDir, "${AssetPaths.MODEL_DIR}/${file.sha256.take(16)}-${file.path}")
        if (!out.isFile || out.length() != file.bytes) {
            out.parentFile?.mkdirs()
            assets.open("${AssetPaths.MODEL_DIR}/${file.path}").use { src -> out.outputStream().use { src.copyTo(it) } }
        }
        return out
    }

    private fun onBundleLoaded() {
        title = "${bundle.modelName} · ${bundle.target}"
        picker.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, bundle.files.map { it.title })
        picker.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = select(bundle.files[position])
            override fun onNothingSelected(parent: AdapterView<*>?) = Unit
        }
    }

    private fun select(file: ModelFile) = worker.execute {
        runner?.close()
        runner = null
        runner = try {
            ModelRunner.open(file, modelPath(file), context = this)
        } catch (e: Exception) {
            runOnUiThread { result.text = "${file.path}: ${e.message}" }
            null
        }
    }

    private fun classify() {
        val text = input.text.toString()
        worker.execute {
            val current = runner ?: return@execute
            val t0 = SystemClock.elapsedRealtimeNanos()
            // MediaPipe mode: no tokenizer code here, only the normalization its tokenizer lacks (MediaPipeText.kt)
            val encoding = if (current.takesText) null else tokenizer.encode(text, bundle.tokenizerMaxLength, pad = !bundle.dynamicLength)
            val prepared = if (current.takesText) MediaPipeText.normalize(text, bundle.tokenizerKind) else text
            val t1 = SystemClock.elapsedRealtimeNanos()
            val probs = if (encoding == null) current.classify(prepared).map { it.toDouble() }.toDoubleArray()
                        else softmax(current.run(encoding))
            val t2 = SystemClock.elapsedRealtimeNanos()
            val best = probs.indices.maxByOrNull { probs[it] } ?: 0
            val lines = buildString {
                append("Prediction: ${bundle.labels[best]}\n\n")
                probs.forEachIndexed { i, p -> append("%-16s %6.2f %%\n".format(bundle.labels[i], 100 * p)) }
                append("\n${current.file.title}\n")
                append((if (current.takesText) "normalize %.2f ms · classify(text) %.2f ms" else "tokenize %.2f ms · inference %.2f ms")
                    .format((t1 - t0) / 1e6, (t2 - t1) / 1e6))
            }
            runOnUiThread { result.text = lines }
        }
    }

    private fun runSelfCheck() {
        val check = SelfCheck(readAsset(bundle.goldenFile), tokenizer)
        val results = ArrayList<CheckResult>()
        results.add(check.checkTokenizer())
        for (file in bundle.files) {
            results.add(
                try {
                    ModelRunner.open(file, modelPath(file), context = this).use { check.checkModel(it) }
                } catch (e: Exception) {
                    CheckResult(file.path, false, "could not run: ${e.message}")
                },
            )
        }
        val ok = results.all { it.passed }
        val text = (listOf(if (ok) "Self-check PASSED" else "Self-check FAILED") +
            results.map { "${if (it.passed) "✓" else "✗"} ${it.subject}: ${it.detail}" }).joinToString("\n")
        runOnUiThread {
            selfCheck.text = text
            selfCheck.setTextColor(if (ok) Color.rgb(0, 128, 0) else Color.RED)
        }
    }

    private fun softmax(logits: FloatArray): DoubleArray {
        val m = logits.maxOrNull() ?: 0f
        val e = logits.map { exp((it - m).toDouble()) }
        val s = e.sum()
        return DoubleArray(e.size) { e[it] / s }
    }

    private fun buildViews() {
        val pad = (16 * resources.displayMetrics.density).toInt()
        val column = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(pad, pad, pad, pad) }
        input = EditText(this).apply { hint = getString(R.string.input_hint); minLines = 3 }
        picker = Spinner(this)
        val run = Button(this).apply { text = getString(R.string.classify); setOnClickListener { classify() } }
        result = TextView(this).apply { typeface = android.graphics.Typeface.MONOSPACE; setPadding(0, pad, 0, pad) }
        selfCheck = TextView(this).apply { text = getString(R.string.self_check_running) }
        listOf(input, picker, run, result, selfCheck).forEach(column::addView)
        setContentView(ScrollView(this).apply { addView(column) })
    }
}
