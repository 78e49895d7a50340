package org.pipeline.demo.core

import java.util.Locale
import kotlin.math.abs
import org.pipeline.demo.tokenizer.Encoding
import org.pipeline.demo.tokenizer.Json
import org.pipeline.demo.tokenizer.Tokenizer

/**
 * One loaded model file. The app's runtime adapters implement it (app/.../Runners.kt: ExecuTorch, LiteRT;
 * MediaPipeRunner.kt), each around one runtime call; everything else (inputs, outputs, checks) is this module's.
 */
interface ModelRunner : AutoCloseable {
    val file: ModelFile

    /** Ids-in files: one inference on `inputs` (ModelInputs, manifest order); the output's values (logits). */
    fun forward(inputs: List<InputTensor>): FloatArray =
        throw UnsupportedOperationException("${file.path} takes text, not token ids")

    /** Text-in files (MediaPipe): the probability of every label, in label order. */
    fun classify(text: String): FloatArray =
        throw UnsupportedOperationException("${file.path} takes token ids, not text")

    override fun close() {}
}

/** One line of the self-check: what was checked, whether it passed, the detail shown on screen, the worst error. */
data class CheckResult(val subject: String, val passed: Boolean, val detail: String, val worst: Double? = null)

/** One golden.json case: a text, the ids the Python tokenizer gave it, each file's expected output. */
class GoldenCase(val text: String, val encoding: Encoding, val expected: Map<*, *>)

/** golden.json: the self-check vectors the pipeline wrote next to the model files. */
class Golden(goldenText: String) {
    private val root = Json.parse(goldenText)
    val maxLength = JsonPath.int(root, GoldenKeys.MAX_LENGTH)
    /** "none": the golden ids are exactly the tokens of each text (dynamic files); else padded to maxLength. */
    val pad = JsonPath.string(root, GoldenKeys.PADDING) != ManifestValues.PADDING_NONE
    private val tolerances = JsonPath.map(root, GoldenKeys.TOLERANCE)
    val cases: List<GoldenCase> = JsonPath.list(root, GoldenKeys.CASES).map { case ->
        GoldenCase(
            JsonPath.string(case, JsonPath.leaf(GoldenKeys.CASE_TEXT)),
            Encoding(
                JsonPath.ints(case, JsonPath.leaf(GoldenKeys.CASE_INPUT_IDS)),
                JsonPath.ints(case, JsonPath.leaf(GoldenKeys.CASE_ATTENTION_MASK)),
                JsonPath.ints(case, JsonPath.leaf(GoldenKeys.CASE_TOKEN_TYPE_IDS)),
            ),
            JsonPath.map(case, JsonPath.leaf(GoldenKeys.CASE_EXPECTED)),
        )
    }

    /** The largest |output - expected| allowed for `path`: what the pipeline allowed the file; null when absent. */
    fun tolerance(path: String): Double? = (tolerances[path] as? Number)?.toDouble()?.takeIf { it.isFinite() && it >= 0 }

    /** The expected output of `path` for `case`; null when golden.json has none or it is not a list of numbers. */
    fun expected(case: GoldenCase, path: String): DoubleArray? =
        (case.expected[path] as? List<*>)?.let { list ->
            if (list.all { it is Number }) DoubleArray(list.size) { (list[it] as Number).toDouble() } else null
        }
}

/**
 * The start-up self-check: golden.json through the on-device tokenizer and every bundled model. Token ids must
 * equal the Python tokenizer's exactly; each file's outputs must be within golden.json's tolerance for that file of
 * what the pipeline measured (|output - expected| <= tolerance for every value of every case; NaN fails). Ids-in
 * files get the golden ids (a tokenizer difference is reported once, by the tokenizer line), built into inputs by
 * ModelInputs like any text; MediaPipe files get the golden text as the pipeline classified it (no app
 * normalization) and are compared on probabilities (what golden.json holds for them).
 */
class SelfCheck(private val bundle: ModelBundle, goldenText: String) {
    val golden = Golden(goldenText)

    fun checkTokenizer(tokenizer: Tokenizer): CheckResult {
        val differing = ArrayList<String>()
        for (case in golden.cases) {
            val e = tokenizer.encode(case.text, golden.maxLength, golden.pad)
            val same = case.encoding.inputIds.contentEquals(e.inputIds) &&
                case.encoding.attentionMask.contentEquals(e.attentionMask) &&
                case.encoding.tokenTypeIds.contentEquals(e.tokenTypeIds)
            if (!same) differing.add("\"${case.text.take(CoreRules.DETAIL_TEXT_CHARS)}\"")
        }
        val n = golden.cases.size
        return CheckResult("tokenizer", differing.isEmpty(),
            if (differing.isEmpty()) "$n texts, ids identical" else "${differing.size}/$n differ: ${differing.joinToString()}")
    }

    /** Runs every golden case through `runner` and compares; a runtime error is a failed line, not a crash. */
    fun checkModel(runner: ModelRunner): CheckResult {
        val file = runner.file
        val outputs = try {
            golden.cases.map { case ->
                if (Runtime.of(file).takesText) runner.classify(case.text)
                else runner.forward(bundle.inputs(file, case.encoding))
            }
        } catch (e: Exception) {
            return CheckResult(file.path, false, "could not run: ${e.message}")
        }
        return compare(file, outputs)
    }

    /** `outputs[i]`: what `file` gave for golden case i. */
    fun compare(file: ModelFile, outputs: List<FloatArray>): CheckResult {
        val path = file.path
        val tolerance = golden.tolerance(path) ?: return CheckResult(path, false, "no tolerance for $path in golden.json")
        require(outputs.size == golden.cases.size) { "${outputs.size} outputs for ${golden.cases.size} golden cases" }
        var worst = 0.0
        for ((case, output) in golden.cases.zip(outputs)) {
            val expected = golden.expected(case, path) ?: return CheckResult(path, false, "no expected values for $path")
            if (output.size != expected.size) {
                return CheckResult(path, false, "${output.size} values, golden.json has ${expected.size}")
            }
            for (i in output.indices) {
                val error = abs(output[i].toDouble() - expected[i])
                if (error.isNaN()) return CheckResult(path, false, "output is NaN", Double.NaN)
                worst = maxOf(worst, error)
            }
        }
        val what = if (Runtime.of(file).takesText) "probability" else "logit"
        return CheckResult(path, worst <= tolerance,
            String.format(Locale.ROOT, "max |Δ%s| %.2e (tolerance %.1e)", what, worst, tolerance), worst)
    }

    /** The whole check: the tokenizer, then each file opened with `open`, checked, closed. */
    fun run(tokenizer: Tokenizer, open: (ModelFile) -> ModelRunner): List<CheckResult> =
        listOf(checkTokenizer(tokenizer)) + bundle.files.map { file ->
            try {
                open(file).use { checkModel(it) }
            } catch (e: Exception) {
                CheckResult(file.path, false, "could not run: ${e.message}")
            }
        }

    companion object {
        const val PASSED = "Self-check PASSED"
        const val FAILED = "Self-check FAILED"

        /** What the screen shows: the verdict, then one line per check. */
        fun summary(results: List<CheckResult>): String =
            (listOf(if (results.all { it.passed }) PASSED else FAILED) +
                results.map { "${if (it.passed) "✓" else "✗"} ${it.subject}: ${it.detail}" }).joinToString("\n")
    }
}
