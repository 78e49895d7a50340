package org.pipeline.demo

import kotlin.math.abs
import org.pipeline.demo.tokenizer.Encoding
import org.pipeline.demo.tokenizer.Json
import org.pipeline.demo.tokenizer.Tokenizer

/** One line of the self-check: what was checked, whether it passed, and the detail shown on screen. */
data class CheckResult(val subject: String, val passed: Boolean, val detail: String)

/**
 * golden.json through the on-device tokenizer and every bundled model: token ids must equal the Python
 * tokenizer's exactly; logits must be within the per-file tolerance of what the pipeline measured. MediaPipe
 * files take the golden text and are compared on probabilities (what golden.json holds for them).
 */
class SelfCheck(private val goldenText: String, private val tokenizer: Tokenizer) {
    private val golden = Json.parse(goldenText)
    private val maxLength = JsonPath.int(golden, GoldenKeys.MAX_LENGTH)
    // "none": the golden ids are exactly the tokens of each text (dynamic files); else padded to maxLength
    private val pad = JsonPath.string(golden, GoldenKeys.PADDING) != ManifestValues.PADDING_NONE
    private val tolerance = JsonPath.get(golden, GoldenKeys.TOLERANCE) as Map<*, *>
    private val cases = JsonPath.list(golden, GoldenKeys.CASES)

    fun checkTokenizer(): CheckResult {
        var bad = 0
        val details = ArrayList<String>()
        for (case in cases) {
            val text = JsonPath.string(case, JsonPath.leaf(GoldenKeys.CASE_TEXT))
            val e = tokenizer.encode(text, maxLength, pad)
            val same = ints(case, GoldenKeys.CASE_INPUT_IDS).contentEquals(e.inputIds) &&
                ints(case, GoldenKeys.CASE_ATTENTION_MASK).contentEquals(e.attentionMask) &&
                ints(case, GoldenKeys.CASE_TOKEN_TYPE_IDS).contentEquals(e.tokenTypeIds)
            if (!same) { bad++; details.add("\"${text.take(40)}\"") }
        }
        return CheckResult("tokenizer", bad == 0,
            if (bad == 0) "${cases.size} texts, ids identical" else "$bad/${cases.size} differ: ${details.joinToString()}")
    }

    fun checkModel(runner: ModelRunner): CheckResult {
        val path = runner.file.path
        val tol = (tolerance[path] as? Number)?.toDouble()
            ?: return CheckResult(path, false, "no tolerance for $path in golden.json")
        var worst = 0.0
        for (case in cases) {
            val expected = (JsonPath.get(case, JsonPath.leaf(GoldenKeys.CASE_EXPECTED)) as Map<*, *>)[path] as? List<*>
                ?: return CheckResult(path, false, "no expected logits for $path")
            val logits = if (runner.takesText) {
                // MediaPipe: the golden text as the pipeline classified it (no app normalization); probabilities
                runner.classify(JsonPath.string(case, JsonPath.leaf(GoldenKeys.CASE_TEXT)))
            } else {
                // the golden ids, not the on-device ones: a tokenizer difference is reported by checkTokenizer
                runner.run(Encoding(
                    ints(case, GoldenKeys.CASE_INPUT_IDS),
                    ints(case, GoldenKeys.CASE_ATTENTION_MASK),
                    ints(case, GoldenKeys.CASE_TOKEN_TYPE_IDS),
                ))
            }
            if (logits.size != expected.size) return CheckResult(path, false, "${logits.size} logits, expected ${expected.size}")
            for (i in logits.indices) worst = maxOf(worst, abs(logits[i] - (expected[i] as Number).toDouble()))
        }
        return CheckResult(path, worst <= tol, "max |Δlogit| %.2e (tolerance %.1e)".format(worst, tol))
    }

    private fun ints(case: Any?, key: String): IntArray =
        JsonPath.list(case, JsonPath.leaf(key)).map { (it as Number).toInt() }.toIntArray()
}
