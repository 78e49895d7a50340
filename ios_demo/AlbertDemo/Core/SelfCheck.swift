import Foundation

/// One loaded model file. The app's runtime adapters implement it (Runners.swift: ExecuTorch, LiteRT;
/// MediaPipeRunner.swift), each around one runtime call; everything else (inputs, outputs, checks) is the core's.
protocol ModelRunner: AnyObject {
    var file: ModelFile { get }
    /// Ids-in files: one inference on `inputs` (ModelInputs, manifest order); the output's values (logits).
    func forward(_ inputs: [InputTensor]) throws -> [Float]
    /// Text-in files (MediaPipe): the probability of every label, in label order.
    func classify(_ text: String) throws -> [Float]
}

extension ModelRunner {
    func forward(_ inputs: [InputTensor]) throws -> [Float] {
        throw BundleError.invalid("\(file.path) takes text, not token ids")
    }

    func classify(_ text: String) throws -> [Float] {
        throw BundleError.invalid("\(file.path) takes token ids, not text")
    }
}

/// One line of the self-check: what was checked, whether it passed, the detail shown on screen, the worst error.
struct CheckResult: Identifiable {
    let subject: String
    let passed: Bool
    let detail: String
    var worst: Double? = nil
    var id: String { subject }
}

/// One golden.json case: a text, the ids the Python tokenizer gave it, each file's expected output.
struct GoldenCase {
    let text: String
    let encoding: Encoding
    let expected: [String: Any]
}

/// golden.json: the self-check vectors the pipeline wrote next to the model files.
struct Golden {
    let maxLength: Int
    /// "none": the golden ids are exactly the tokens of each text (dynamic files); else padded to maxLength.
    let pad: Bool
    let cases: [GoldenCase]
    private let tolerances: [String: Any]

    init(_ root: Any) throws {
        maxLength = try JSONPath.int(root, GoldenKeys.maxLength)
        pad = try JSONPath.string(root, GoldenKeys.padding) != ManifestValues.paddingNone
        tolerances = try JSONPath.map(root, GoldenKeys.tolerance)
        cases = try JSONPath.list(root, GoldenKeys.cases).map { item in
            GoldenCase(
                text: try JSONPath.string(item, JSONPath.leaf(GoldenKeys.caseText)),
                encoding: Encoding(
                    inputIds: try JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseInputIds)),
                    attentionMask: try JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseAttentionMask)),
                    tokenTypeIds: try JSONPath.ints(item, JSONPath.leaf(GoldenKeys.caseTokenTypeIds))
                ),
                expected: try JSONPath.map(item, JSONPath.leaf(GoldenKeys.caseExpected))
            )
        }
    }

    /// The largest |output - expected| allowed for `path`: what the pipeline allowed the file; nil when absent.
    func tolerance(_ path: String) -> Double? {
        guard let value = (tolerances[path] as? NSNumber)?.doubleValue, value.isFinite, value >= 0 else { return nil }
        return value
    }

    /// The expected output of `path` for `item`; nil when golden.json has none or it is not a list of numbers.
    func expected(_ item: GoldenCase, _ path: String) -> [Double]? {
        guard let list = item.expected[path] as? [Any] else { return nil }
        let numbers = list.compactMap { ($0 as? NSNumber)?.doubleValue }
        return numbers.count == list.count ? numbers : nil
    }
}

/// The start-up self-check: golden.json through the on-device tokenizer and every bundled model. Token ids must
/// equal the Python tokenizer's exactly; each file's outputs must be within golden.json's tolerance for that file of
/// what the pipeline measured (|output - expected| <= tolerance for every value of every case; NaN fails). Ids-in
/// files get the golden ids (a tokenizer difference is reported once, by the tokenizer line), built into inputs by
/// ModelInputs like any text; MediaPipe files get the golden text as the pipeline classified it (no app
/// normalization) and are compared on probabilities (what golden.json holds for them).
struct SelfCheck {
    static let passedTitle = "Self-check PASSED"
    static let failedTitle = "Self-check FAILED"

    let bundle: ModelBundle
    let golden: Golden

    init(bundle: ModelBundle) throws {
        self.bundle = bundle
        golden = try Golden(ModelBundle.readJSON(bundle.url(bundle.goldenFile)))
    }

    /// `encode(text, maxLength, pad)`: the on-device tokenizer under the contract golden.json was written with.
    func checkTokenizer(_ encode: (String, Int, Bool) -> Encoding) -> CheckResult {
        var differing: [String] = []
        for item in golden.cases {
            let encoding = encode(item.text, golden.maxLength, golden.pad)
            let same = encoding.inputIds == item.encoding.inputIds
                && encoding.attentionMask == item.encoding.attentionMask
                && encoding.tokenTypeIds == item.encoding.tokenTypeIds
            if !same { differing.append("\"\(item.text.prefix(CoreRules.detailTextChars))\"") }
        }
        let count = golden.cases.count
        let detail = differing.isEmpty
            ? "\(count) texts, ids identical"
            : "\(differing.count)/\(count) differ: \(differing.joined(separator: ", "))"
        return CheckResult(subject: "tokenizer", passed: differing.isEmpty, detail: detail)
    }

    /// Runs every golden case through `runner` and compares; a runtime error is a failed line, not a crash.
    func checkModel(_ runner: ModelRunner) -> CheckResult {
        let file = runner.file
        do {
            let takesText = try Runtime.of(file).takesText
            let outputs = try golden.cases.map { item -> [Float] in
                try takesText ? runner.classify(item.text) : runner.forward(bundle.inputs(file, item.encoding))
            }
            return compare(file, outputs: outputs)
        } catch {
            return CheckResult(subject: file.path, passed: false, detail: "could not run: \(error.localizedDescription)")
        }
    }

    /// `outputs[i]`: what `file` gave for golden case i.
    func compare(_ file: ModelFile, outputs: [[Float]]) -> CheckResult {
        let path = file.path
        guard let tolerance = golden.tolerance(path) else {
            return CheckResult(subject: path, passed: false, detail: "no tolerance for \(path) in golden.json")
        }
        guard outputs.count == golden.cases.count else {
            return CheckResult(subject: path, passed: false, detail: "\(outputs.count) outputs for \(golden.cases.count) golden cases")
        }
        var worst = 0.0
        for (item, output) in zip(golden.cases, outputs) {
            guard let expected = golden.expected(item, path) else {
                return CheckResult(subject: path, passed: false, detail: "no expected values for \(path)")
            }
            guard output.count == expected.count else {
                return CheckResult(subject: path, passed: false, detail: "\(output.count) values, golden.json has \(expected.count)")
            }
            for (value, reference) in zip(output, expected) {
                let error = abs(Double(value) - reference)
                if error.isNaN { return CheckResult(subject: path, passed: false, detail: "output is NaN", worst: .nan) }
                worst = max(worst, error)
            }
        }
        let what = (try? Runtime.of(file).takesText) == true ? "probability" : "logit"
        let detail = "max |Δ\(what)| " + String(format: "%.2e (tolerance %.1e)", worst, tolerance)
        return CheckResult(subject: path, passed: worst <= tolerance, detail: detail, worst: worst)
    }

    /// The whole check: the tokenizer, then each file opened with `open` and checked.
    func run(encode: (String, Int, Bool) -> Encoding, open: (ModelFile) throws -> ModelRunner) -> [CheckResult] {
        var results = [checkTokenizer(encode)]
        for file in bundle.files {
            do {
                results.append(checkModel(try open(file)))
            } catch {
                results.append(CheckResult(subject: file.path, passed: false, detail: "could not run: \(error.localizedDescription)"))
            }
        }
        return results
    }

    /// What the screen shows: the verdict, then one line per check.
    static func summary(_ results: [CheckResult]) -> String {
        let title = results.allSatisfy { $0.passed } ? passedTitle : failedTitle
        return ([title] + results.map { "\($0.passed ? "✓" : "✗") \($0.subject): \($0.detail)" }).joined(separator: "\n")
    }
}
