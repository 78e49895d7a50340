import SwiftUI

/// Loads the bundle, runs the self-check, and classifies the typed text with the chosen model file.
@MainActor
final class DemoModel: ObservableObject {
    @Published var bundle: ModelBundle?
    @Published var selectedPath: String = ""
    @Published var text: String = "Great coffee, I will buy it again!"
    @Published var prediction: String = ""
    @Published var probabilities: [(label: String, value: Double)] = []
    @Published var latency: String = ""
    @Published var checks: [CheckResult] = []
    @Published var status: String = "Loading the bundled model…"

    private var tokenizer: TextTokenizer?
    private var runners: [String: ModelRunner] = [:]

    func start() async {
        do {
            let bundle = try ModelBundle.load()
            let tokenizer = try TextTokenizer(bundle: bundle)
            self.bundle = bundle
            self.tokenizer = tokenizer
            selectedPath = bundle.files.first?.path ?? ""
            status = "Self-check against golden.json running…"
            let results = await Task.detached { () -> [CheckResult] in
                do {
                    return try SelfCheck(bundle: bundle).run(
                        encode: { tokenizer.encode($0, maxLength: $1, pad: $2) },
                        open: { try Runners.open($0, in: bundle) })
                } catch {
                    return [CheckResult(subject: bundle.goldenFile, passed: false, detail: error.localizedDescription)]
                }
            }.value
            checks = results
            status = results.allSatisfy(\.passed) ? SelfCheck.passedTitle : SelfCheck.failedTitle
        } catch {
            status = "Cannot load the bundled model: \(error.localizedDescription)"
        }
    }

    /// Views and clocks only: the inputs, the runtime choice, the probabilities and the label are the core's.
    func classify() {
        guard let bundle, let tokenizer, let file = bundle.files.first(where: { $0.path == selectedPath }) else { return }
        do {
            let runner = try runners[file.path] ?? Runners.open(file, in: bundle)
            runners[file.path] = runner
            let start = DispatchTime.now().uptimeNanoseconds
            let result: Prediction
            let steps: String
            let prepared: DispatchTime
            if try Runtime.of(file).takesText {
                // MediaPipe mode: no tokenizer code here, only the normalization its tokenizer lacks (Core/Prediction.swift)
                let text = MediaPipeText.normalize(self.text, tokenizerKind: bundle.tokenizerKind)
                prepared = DispatchTime.now()
                result = Prediction.fromProbabilities(try runner.classify(text), labels: bundle.labels)
                steps = "normalize %.2f ms · classify(text) %.2f ms"
            } else {
                let encoding = tokenizer.encode(text, maxLength: bundle.tokenizerMaxLength, pad: !bundle.dynamicLength)
                prepared = DispatchTime.now()
                result = Prediction.fromLogits(try runner.forward(bundle.inputs(file, encoding)), labels: bundle.labels)
                steps = "tokenize %.2f ms · inference %.2f ms"
            }
            let done = DispatchTime.now().uptimeNanoseconds
            probabilities = zip(result.labels, result.probabilities).map { (label: $0.0, value: $0.1) }
            prediction = result.label
            latency = String(format: steps, Double(prepared.uptimeNanoseconds - start) / 1e6,
                             Double(done - prepared.uptimeNanoseconds) / 1e6)
        } catch {
            prediction = "error: \(error.localizedDescription)"
        }
    }
}

struct ContentView: View {
    @StateObject private var model = DemoModel()

    var body: some View {
        NavigationStack {
            Form {
                Section("Text") {
                    TextEditor(text: $model.text).frame(minHeight: 80)
                }
                if let bundle = model.bundle {
                    Section("Model") {
                        Picker("Runtime · precision", selection: $model.selectedPath) {
                            ForEach(bundle.files) { file in
                                Text(file.title).tag(file.path)
                            }
                        }
                        Button("Classify") { model.classify() }
                    }
                }
                if !model.prediction.isEmpty {
                    Section("Prediction: \(model.prediction)") {
                        ForEach(model.probabilities, id: \.label) { item in
                            HStack {
                                Text(item.label)
                                Spacer()
                                Text(String(format: "%.2f %%", 100 * item.value)).monospacedDigit()
                            }
                        }
                        Text(model.latency).font(.footnote).foregroundStyle(.secondary)
                    }
                }
                Section(model.status) {
                    ForEach(model.checks) { check in
                        Label("\(check.subject): \(check.detail)",
                              systemImage: check.passed ? "checkmark.circle.fill" : "xmark.octagon.fill")
                            .foregroundStyle(check.passed ? .green : .red)
                    }
                }
            }
            .navigationTitle(model.bundle?.modelName ?? "ALBERT demo")
        }
        .task { await model.start() }
    }
}

#Preview {
    ContentView()
}
