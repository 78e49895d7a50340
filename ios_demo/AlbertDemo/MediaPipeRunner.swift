import Foundation
import MediaPipeTasksText

/// MediaPipe mode: a `.mediapipe.tflite` in MediaPipe Tasks' TextClassifier (the `MediaPipeTasksText` pod). The
/// file carries its tokenizer (vocab.txt or spiece.model) and labels in its TFLite metadata, so the app needs no
/// tokenizer code: `classify(text)` gives the probability of every label.
final class MediaPipeRunner: ModelRunner {
    let file: ModelFile
    private let classifier: TextClassifier

    init(file: ModelFile, url: URL) throws {
        self.file = file
        let options = TextClassifierOptions()
        options.baseOptions.modelAssetPath = url.path
        options.maxResults = -1  // every category, not only the best
        classifier = try TextClassifier(options: options)
    }

    var takesText: Bool { true }

    func classify(_ text: String) throws -> [Float] {
        let result = try classifier.classify(text: text)
        guard let categories = result.classificationResult.classifications.first?.categories else {
            throw BundleError.invalid("\(file.path): MediaPipe returned no classification")
        }
        var scores = [Float](repeating: 0, count: categories.count)
        for category in categories {  // MediaPipe sorts by score: back to label order
            scores[category.index] = category.score
        }
        return scores
    }

    func run(_ encoding: Encoding) throws -> [Float] {
        throw BundleError.invalid("\(file.path) is a MediaPipe file: it takes text (classify)")
    }
}

/// What the app does to the text before `classify`: MediaPipe's tokenizers lowercase ASCII only and strip no
/// accents, where the model's own tokenizer lowercased and stripped accents ("Café" would be [UNK] on the phone).
/// The same steps as `app_normalize` in pipeline/tokenizer_drift.py, whose effect the build's drift report measures.
enum MediaPipeText {
    static func normalize(_ text: String, tokenizerKind: String) -> String {
        if tokenizerKind == "wordpiece" {
            var out = String.UnicodeScalarView()
            for scalar in text.lowercased().decomposedStringWithCanonicalMapping.unicodeScalars {
                switch scalar {
                case "\t", "\n", "\r":
                    out.append(" ")
                case "\u{FFFD}":
                    continue
                default:
                    let category = scalar.properties.generalCategory
                    if category == .spaceSeparator { out.append(" "); continue }  // MediaPipe splits on ASCII spaces only
                    if category == .nonspacingMark || category == .control || category == .format { continue }
                    out.append(scalar)
                }
            }
            return String(out)
        }
        // sentencepiece
        let scalars = text.decomposedStringWithCompatibilityMapping.unicodeScalars
            .filter { $0.properties.generalCategory != .nonspacingMark }
        return String(String.UnicodeScalarView(scalars)).lowercased()
            .split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }
}
