package org.pipeline.demo

import android.content.Context
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.text.textclassifier.TextClassifier
import java.text.Normalizer
import org.pipeline.demo.tokenizer.Encoding

/**
 * MediaPipe mode: a `.mediapipe.tflite` in MediaPipe Tasks' TextClassifier (`com.google.mediapipe:tasks-text`).
 * The file carries its tokenizer (vocab.txt or spiece.model) and labels in its TFLite metadata, so the app
 * needs no tokenizer code: `classify(text)` gives the probability of every label. MediaPipe reads the model
 * straight from the APK's assets (stored uncompressed, `noCompress += "tflite"`).
 */
class MediaPipeRunner(override val file: ModelFile, context: Context) : ModelRunner {
    private val classifier: TextClassifier = TextClassifier.createFromOptions(
        context,
        TextClassifier.TextClassifierOptions.builder()
            .setBaseOptions(BaseOptions.builder().setModelAssetPath("${AssetPaths.MODEL_DIR}/${file.path}").build())
            .setMaxResults(-1) // every category, not only the best
            .build(),
    )

    override val takesText: Boolean get() = true

    override fun classify(text: String): FloatArray {
        val categories = classifier.classify(text).classificationResult().classifications()[0].categories()
        val scores = FloatArray(categories.size)
        for (c in categories) scores[c.index()] = c.score() // MediaPipe sorts by score: back to label order
        return scores
    }

    override fun run(encoding: Encoding): FloatArray =
        throw UnsupportedOperationException("${file.path} is a MediaPipe file: it takes text (classify)")

    override fun close() = classifier.close()
}

/**
 * What the app does to the text before `classify`: MediaPipe's tokenizers lowercase ASCII only and strip no
 * accents, where the model's own tokenizer lowercased and stripped accents ("Café" would be [UNK] on the phone).
 * The same steps as `app_normalize` in pipeline/tokenizer_drift.py, whose effect the build's drift report measures.
 */
object MediaPipeText {
    fun normalize(text: String, tokenizerKind: String): String =
        if (tokenizerKind == "wordpiece") {
            val out = StringBuilder()
            for (ch in Normalizer.normalize(text.lowercase(), Normalizer.Form.NFD)) {
                val type = Character.getType(ch).toByte()
                when {
                    ch == '\t' || ch == '\n' || ch == '\r' || type == Character.SPACE_SEPARATOR -> out.append(' ')
                    type == Character.NON_SPACING_MARK || ch == '\uFFFD' -> Unit
                    type == Character.CONTROL || type == Character.FORMAT -> Unit
                    else -> out.append(ch)
                }
            }
            out.toString()
        } else { // sentencepiece
            Normalizer.normalize(text, Normalizer.Form.NFKD)
                .filter { Character.getType(it).toByte() != Character.NON_SPACING_MARK }
                .lowercase()
                .split(Regex("\\s+")).filter { it.isNotEmpty() }.joinToString(" ")
        }
}
