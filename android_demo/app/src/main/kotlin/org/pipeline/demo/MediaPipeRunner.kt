package org.pipeline.demo

import android.content.Context
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.text.textclassifier.TextClassifier
import org.pipeline.demo.core.AssetPaths
import org.pipeline.demo.core.ModelFile
import org.pipeline.demo.core.ModelRunner
import org.pipeline.demo.core.Probabilities

/**
 * MediaPipe mode: a `.mediapipe.tflite` in MediaPipe Tasks' TextClassifier (`com.google.mediapipe:tasks-text`).
 * The file carries its tokenizer (vocab.txt or spiece.model) and labels in its TFLite metadata, so the app needs
 * no tokenizer code: `classify(text)` gives the probability of every label (the core puts MediaPipe's categories,
 * sorted by score, back in label order; MediaPipeText.normalize, also in the core, prepares the typed text).
 * MediaPipe reads the model straight from the APK's assets (stored uncompressed, `noCompress += "tflite"`).
 */
class MediaPipeRunner(override val file: ModelFile, context: Context, private val numLabels: Int) : ModelRunner {
    private val classifier: TextClassifier = TextClassifier.createFromOptions(
        context,
        TextClassifier.TextClassifierOptions.builder()
            .setBaseOptions(BaseOptions.builder().setModelAssetPath("${AssetPaths.MODEL_DIR}/${file.path}").build())
            .setMaxResults(-1) // every category, not only the best
            .build(),
    )

    override fun classify(text: String): FloatArray = Probabilities.inLabelOrder(
        classifier.classify(text).classificationResult().classifications()[0].categories().map { it.index() to it.score() },
        numLabels,
    )

    override fun close() = classifier.close()
}
