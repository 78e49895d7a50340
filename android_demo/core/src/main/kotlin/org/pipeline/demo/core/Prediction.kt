package org.pipeline.demo.core

import java.text.Normalizer
import java.util.Locale
import kotlin.math.exp

/** Logits or MediaPipe categories to probabilities in label order. */
object Probabilities {
    /** softmax in double precision (max subtracted first). */
    fun softmax(logits: FloatArray): DoubleArray {
        require(logits.isNotEmpty()) { "no logits" }
        val m = logits.maxOf { it.toDouble() }
        val e = DoubleArray(logits.size) { exp(logits[it].toDouble() - m) }
        val s = e.sum()
        return DoubleArray(e.size) { e[it] / s }
    }

    /**
     * MediaPipe returns its categories (index, score) sorted by score: back to label order. Every label must come
     * back exactly once (pipeline/runtimes/mediapipe.py refuses the same).
     */
    fun inLabelOrder(categories: List<Pair<Int, Float>>, numLabels: Int): FloatArray {
        val scores = FloatArray(numLabels) { Float.NaN }
        for ((index, score) in categories) {
            require(index in 0 until numLabels) { "category index $index outside the $numLabels labels" }
            require(scores[index].isNaN()) { "category index $index returned twice" }
            scores[index] = score
        }
        require(scores.none { it.isNaN() }) { "MediaPipe returned ${categories.size} categories for $numLabels labels" }
        return scores
    }
}

/** The probability of every label and the predicted one (the first of the highest). */
class Prediction(val labels: List<String>, val probabilities: DoubleArray) {
    init {
        require(labels.size == probabilities.size) { "${probabilities.size} values for ${labels.size} labels" }
    }

    val best: Int = probabilities.indices.maxByOrNull { probabilities[it] } ?: 0
    val label: String get() = labels[best]

    /** The result panel: the prediction, each label's probability, the file and the two latencies. */
    fun report(file: ModelFile, firstMs: Double, secondMs: Double): String = buildString {
        append("Prediction: $label\n\n")
        probabilities.forEachIndexed { i, p -> append(String.format(Locale.ROOT, "%-16s %6.2f %%\n", labels[i], 100 * p)) }
        append("\n${file.title}\n")
        val steps = if (Runtime.of(file).takesText) "normalize %.2f ms · classify(text) %.2f ms" else "tokenize %.2f ms · inference %.2f ms"
        append(String.format(Locale.ROOT, steps, firstMs, secondMs))
    }

    companion object {
        fun fromLogits(logits: FloatArray, labels: List<String>) = Prediction(labels, Probabilities.softmax(logits))

        fun fromProbabilities(probabilities: FloatArray, labels: List<String>) =
            Prediction(labels, DoubleArray(probabilities.size) { probabilities[it].toDouble() })
    }
}

/**
 * What the app does to the text before MediaPipe's `classify`: MediaPipe's tokenizers lowercase ASCII only and strip
 * no accents, where the model's own tokenizer lowercased and stripped accents ("Café" would be [UNK] on the phone).
 * The same steps as `app_normalize` in pipeline/tokenizer_drift.py, whose effect the build's drift report measures.
 */
object MediaPipeText {
    fun normalize(text: String, tokenizerKind: String): String =
        if (tokenizerKind == ManifestValues.TOKENIZER_WORDPIECE) {
            val out = StringBuilder()
            for (cp in codePoints(Normalizer.normalize(text.lowercase(Locale.ROOT), Normalizer.Form.NFD))) {
                val type = Character.getType(cp).toByte()
                when {
                    cp in WORDPIECE_SPACES || type == Character.SPACE_SEPARATOR -> out.append(' ')
                    cp in WORDPIECE_DROPPED -> Unit
                    type == Character.NON_SPACING_MARK || type == Character.CONTROL || type == Character.FORMAT -> Unit
                    else -> out.appendCodePoint(cp)
                }
            }
            out.toString()
        } else { // sentencepiece: NFKD, drop combining marks, lowercase, collapse whitespace
            val kept = StringBuilder()
            for (cp in codePoints(Normalizer.normalize(text, Normalizer.Form.NFKD))) {
                if (Character.getType(cp).toByte() != Character.NON_SPACING_MARK) kept.appendCodePoint(cp)
            }
            kept.toString().lowercase(Locale.ROOT).split(WHITESPACE).filter { it.isNotEmpty() }.joinToString(" ")
        }

    private val WORDPIECE_SPACES = codePoints(MediaPipeRules.WORDPIECE_SPACES).toSet()
    private val WORDPIECE_DROPPED = codePoints(MediaPipeRules.WORDPIECE_DROPPED).toSet()

    /** Python's str.split() separators: Unicode whitespace (Zs, Zl, Zp, \t..\r, \x85) and \x1c..\x1f. */
    private val WHITESPACE = Regex("[\\s\\p{Z}\\x1c-\\x1f\\x85]+")

    /** By code point, as Python iterates a str: a supplementary character is one, not two surrogates. */
    private fun codePoints(s: String): IntArray = s.codePoints().toArray()
}
