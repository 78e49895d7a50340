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
import org.pipeline.demo.core.AssetPaths
import org.pipeline.demo.core.MediaPipeText
import org.pipeline.demo.core.ModelBundle
import org.pipeline.demo.core.ModelFile
import org.pipeline.demo.core.ModelRunner
import org.pipeline.demo.core.Prediction
import org.pipeline.demo.core.Runtime
import org.pipeline.demo.core.SelfCheck
import org.pipeline.demo.tokenizer.Tokenizer

/**
 * The demo screen: a text field, a runtime · precision picker filled from manifest.json, the predicted label with
 * the probability of every label, the latency of tokenization and inference, and the self-check result.
 * Views, threads, assets and clocks only: what the app computes is in the core module (android_demo/core).
 */
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private lateinit var bundle: ModelBundle
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
                bundle = ModelBundle(readAsset(AssetPaths.MANIFEST), ::readAsset)
                tokenizer = Tokenizer.fromJson(readAsset(bundle.tokenizerFile))
                bundle.checkTokenizer(tokenizer)
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
        val out = File(filesDir, "${AssetPaths.MODEL_DIR}/${file.storageName}")
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
            open(file)
        } catch (e: Exception) {
            runOnUiThread { result.text = "${file.path}: ${e.message}" }
            null
        }
    }

    private fun open(file: ModelFile): ModelRunner = Runners.open(file, modelPath(file), this, bundle.numLabels)

    private fun classify() {
        val text = input.text.toString()
        worker.execute {
            val current = runner ?: return@execute
            val takesText = Runtime.of(current.file).takesText
            val t0 = SystemClock.elapsedRealtimeNanos()
            // MediaPipe mode: no tokenizer code here, only the normalization its tokenizer lacks (core: MediaPipeText)
            val prepared = if (takesText) MediaPipeText.normalize(text, bundle.tokenizerKind) else null
            val encoding = if (takesText) null else bundle.encode(tokenizer, text)
            val t1 = SystemClock.elapsedRealtimeNanos()
            val prediction = try {
                if (encoding == null) Prediction.fromProbabilities(current.classify(prepared!!), bundle.labels)
                else Prediction.fromLogits(current.forward(bundle.inputs(current.file, encoding)), bundle.labels)
            } catch (e: Exception) {
                runOnUiThread { result.text = "${current.file.path}: ${e.message}" }
                return@execute
            }
            val t2 = SystemClock.elapsedRealtimeNanos()
            val lines = prediction.report(current.file, (t1 - t0) / 1e6, (t2 - t1) / 1e6)
            runOnUiThread { result.text = lines }
        }
    }

    private fun runSelfCheck() {
        val results = SelfCheck(bundle, readAsset(bundle.goldenFile)).run(tokenizer, ::open)
        val ok = results.all { it.passed }
        val text = SelfCheck.summary(results)
        runOnUiThread {
            selfCheck.text = text
            selfCheck.setTextColor(if (ok) Color.rgb(0, 128, 0) else Color.RED)
        }
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
