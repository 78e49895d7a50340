import Foundation
import MediaPipeTasksText

/// MediaPipe mode: a `.mediapipe.tflite` in MediaPipe Tasks' TextClassifier (the `MediaPipeTasksText` pod). The
/// file carries its tokenizer (vocab.txt or spiece.model) and labels in its TFLite metadata, so the app needs no
/// tokenizer code: `classify(text)` gives the probability of every label (the core puts MediaPipe's categories,
/// sorted by score, back in label order; Core/Prediction.swift's MediaPipeText prepares the typed text).
final class MediaPipeRunner: ModelRunner {
    let file: ModelFile
    private let classifier: TextClassifier
    private let numLabels: Int

    init(file: ModelFile, url: URL, numLabels: Int) throws {
        self.file = file
        self.numLabels = numLabels
        let options = TextClassifierOptions()
        options.baseOptions.modelAssetPath = url.path
        options.maxResults = -1  // every category, not only the best
        classifier = try TextClassifier(options: options)
    }

    func classify(_ text: String) throws -> [Float] {
        let categories = try classifier.classify(text: text).classificationResult.classifications.first?.categories ?? []
        return try Probabilities.inLabelOrder(categories.map { (index: $0.index, score: $0.score) }, numLabels: numLabels)
    }
}
