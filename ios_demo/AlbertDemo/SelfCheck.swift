import Foundation

struct CheckResult: Identifiable {
    let subject: String
    let passed: Bool
    let detail: String
    var id: String { subject }
}

/// golden.json through the on-device tokenizer and every bundled model: token ids must equal the Python
/// tokenizer's exactly; logits must be within the per-file tolerance of what the pipeline measured. MediaPipe
/// files take the golden text and are compared on probabilities (what golden.json holds for them).
struct SelfCheck {
    let bundle: ModelBundle
    let tokenizer: TextTokenizer

    func run() -> [CheckResult] {
        do {
            let golden = try ModelBundle.readJSON(bundle.url(bundle.goldenFile))
            let maxLength = try JSONPath.int(golden, GoldenKeys.maxLength)
            // "none": golden ids are exactly each text's tokens (dynamic files); else padded to maxLength
            let pad = (try? JSONPath.string(golden, GoldenKeys.padding)) != ManifestValues.paddingNone
            let tolerance = (try JSONPath.get(golden, GoldenKeys.tolerance) as? [String: Any]) ?? [:]
            let cases = try JSONPath.list(golden, GoldenKeys.cases)
            var results = [try checkTokenizer(cases, maxLength: maxLength, pad: pad)]
            for file in bundle.files {
                do {
                    let runner = try Runners.open(file, in: bundle)
                    results.append(try checkModel(runner, cases: cases, tolerance: tolerance))
                } catch {
                    results.append(CheckResult(subject: file.path, passed: false, detail: "could not run: \(error.localizedDescription)"))
                }
            }
            return results
        } catch {
            return [CheckResult(subject: bundle.goldenFile, passed: false, detail: error.localizedDescription)]
        }
    }

    private func checkTokenizer(_ cases: [Any], maxLength: Int, pad: Bool) throws -> CheckResult {
        var differing: [String] = []
        for item in cases {
            let text = try JSONPath.string(item, JSONPath.leaf(GoldenKeys.caseText))
            let encoding = tokenizer.encode(text, maxLength: maxLength, pad: pad)
            let same = try encoding.inputIds == JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseInputIds))
                && encoding.attentionMask == JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseAttentionMask))
                && encoding.tokenTypeIds == JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseTokenTypeIds))
            if !same { differing.append("\"\(text.prefix(40))\"") }
        }
        let detail = differing.isEmpty
            ? "\(cases.count) texts, ids identical"
            : "\(differing.count)/\(cases.count) differ: \(differing.joined(separator: ", "))"
        return CheckResult(subject: "tokenizer", passed: differing.isEmpty, detail: detail)
    }

    private func checkModel(_ runner: ModelRunner, cases: [Any], tolerance: [String: Any]) throws -> CheckResult {
        let path = runner.file.path
        guard let limit = (tolerance[path] as? NSNumber)?.doubleValue else {
            return CheckResult(subject: path, passed: false, detail: "no tolerance for \(path) in golden.json")
        }
        var worst = 0.0
        for item in cases {
            guard let expectedByFile = try JSONPath.get(item, JSONPath.leaf(GoldenKeys.caseExpected)) as? [String: Any],
                  let expected = expectedByFile[path] as? [NSNumber] else {
                return CheckResult(subject: path, passed: false, detail: "no expected logits for \(path)")
            }
            let logits: [Float]
            if runner.takesText {
                // MediaPipe: the golden text as the pipeline classified it (no app normalization); probabilities
                logits = try runner.classify(try JSONPath.string(item, JSONPath.leaf(GoldenKeys.caseText)))
            } else {
                // the golden ids, not the on-device ones: a tokenizer difference is reported by checkTokenizer
                let encoding = Encoding(
                    inputIds: try JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseInputIds)),
                    attentionMask: try JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseAttentionMask)),
                    tokenTypeIds: try JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseTokenTypeIds))
                )
                logits = try runner.run(encoding)
            }
            guard logits.count == expected.count else {
                return CheckResult(subject: path, passed: false, detail: "\(logits.count) logits, expected \(expected.count)")
            }
            for (value, reference) in zip(logits, expected) {
                worst = max(worst, abs(Double(value) - reference.doubleValue))
            }
        }
        let detail = String(format: "max |Δlogit| %.2e (tolerance %.1e)", worst, limit)
        return CheckResult(subject: path, passed: worst <= limit, detail: detail)
    }
}
