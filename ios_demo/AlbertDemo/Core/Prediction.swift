import Foundation

/// Logits or MediaPipe categories to probabilities in label order.
enum Probabilities {
    /// softmax in double precision (max subtracted first).
    static func softmax(_ logits: [Float]) -> [Double] {
        guard let top = logits.max() else { return [] }
        let exps = logits.map { exp(Double($0) - Double(top)) }
        let sum = exps.reduce(0, +)
        return exps.map { $0 / sum }
    }

    /// MediaPipe returns its categories (index, score) sorted by score: back to label order. Every label must come
    /// back exactly once (pipeline/runtimes/mediapipe.py refuses the same).
    static func inLabelOrder(_ categories: [(index: Int, score: Float)], numLabels: Int) throws -> [Float] {
        var scores = [Float](repeating: .nan, count: numLabels)
        for category in categories {
            guard (0..<numLabels).contains(category.index) else {
                throw BundleError.invalid("category index \(category.index) outside the \(numLabels) labels")
            }
            guard scores[category.index].isNaN else { throw BundleError.invalid("category index \(category.index) returned twice") }
            scores[category.index] = category.score
        }
        guard !scores.contains(where: { $0.isNaN }) else {
            throw BundleError.invalid("MediaPipe returned \(categories.count) categories for \(numLabels) labels")
        }
        return scores
    }
}

/// The probability of every label and the predicted one (the first of the highest).
struct Prediction {
    let labels: [String]
    let probabilities: [Double]

    var best: Int {
        var best = 0
        for index in probabilities.indices where probabilities[index] > probabilities[best] { best = index }
        return best
    }

    var label: String { labels[best] }

    static func fromLogits(_ logits: [Float], labels: [String]) -> Prediction {
        Prediction(labels: labels, probabilities: Probabilities.softmax(logits))
    }

    static func fromProbabilities(_ probabilities: [Float], labels: [String]) -> Prediction {
        Prediction(labels: labels, probabilities: probabilities.map { Double($0) })
    }
}

/// What the app does to the text before MediaPipe's `classify`: MediaPipe's tokenizers lowercase ASCII only and
/// strip no accents, where the model's own tokenizer lowercased and stripped accents ("Café" would be [UNK] on the
/// phone). The same steps as `app_normalize` in pipeline/tokenizer_drift.py, whose effect the build's drift report
/// measures; the Android core's MediaPipeText (compiled and compared with Python on CI) is the same code.
enum MediaPipeText {
    static func normalize(_ text: String, tokenizerKind: String) -> String {
        if tokenizerKind == ManifestValues.tokenizerWordpiece {
            let spaces = Set(MediaPipeRules.wordpieceSpaces.unicodeScalars)
            let dropped = Set(MediaPipeRules.wordpieceDropped.unicodeScalars)
            var out = String.UnicodeScalarView()
            for scalar in text.lowercased().decomposedStringWithCanonicalMapping.unicodeScalars {
                let category = scalar.properties.generalCategory
                if spaces.contains(scalar) || category == .spaceSeparator {
                    out.append(" ")  // MediaPipe splits on ASCII spaces only
                } else if dropped.contains(scalar) || category == .nonspacingMark || category == .control || category == .format {
                    continue
                } else {
                    out.append(scalar)
                }
            }
            return String(out)
        }
        // sentencepiece: NFKD, drop combining marks, lowercase, collapse whitespace
        var kept = String.UnicodeScalarView()
        for scalar in text.decomposedStringWithCompatibilityMapping.unicodeScalars
        where scalar.properties.generalCategory != .nonspacingMark {
            kept.append(scalar)
        }
        var words: [String] = []
        var word = String.UnicodeScalarView()
        for scalar in String(kept).lowercased().unicodeScalars {
            if isPythonWhitespace(scalar) {
                if !word.isEmpty { words.append(String(word)) }
                word = String.UnicodeScalarView()
            } else {
                word.append(scalar)
            }
        }
        if !word.isEmpty { words.append(String(word)) }
        return words.joined(separator: " ")
    }

    /// Python's str.split() separators: Unicode White_Space and \u{1C}...\u{1F}.
    private static func isPythonWhitespace(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.isWhitespace || (0x1C...0x1F).contains(scalar.value)
    }
}
