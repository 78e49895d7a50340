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
            let results = await Task.detached { SelfCheck(bundle: bundle, tokenizer: tokenizer).run() }.value
            checks = results
            status = results.allSatisfy(\.passed) ? "Self-check PASSED" : "Self-check FAILED"
        } catch {
            status = "Cannot load the bundled model: \(error.localizedDescription)"
        }
    }

    func classify() {
        guard let bundle, let tokenizer, let file = bundle.files.first(where: { $0.path == selectedPath }) else { return }
        do {
            let runner = try runners[file.path] ?? Runners.open(file, in: bundle)
            runners[file.path] = runner
            let start = DispatchTime.now().uptimeNanoseconds
            if runner.takesText {
                // MediaPipe mode: no tokenizer code here, only the normalization its tokenizer lacks (MediaPipeRunner.swift)
                let prepared = MediaPipeText.normalize(text, tokenizerKind: bundle.tokenizerKind)
                let normalized = DispatchTime.now().uptimeNanoseconds
                let probs = try runner.classify(prepared)
                let done = DispatchTime.now().uptimeNanoseconds
                probabilities = zip(bundle.labels, probs).map { (label: $0.0, value: Double($0.1)) }
                latency = String(format: "normalize %.2f ms · classify(text) %.2f ms",
                                 Double(normalized - start) / 1e6, Double(done - normalized) / 1e6)
            } else {
                let encoding = tokenizer.encode(text, maxLength: bundle.tokenizerMaxLength, pad: !bundle.dynamicLength)
                let tokenized = DispatchTime.now().uptimeNanoseconds
                let logits = try runner.run(encoding)
                let done = DispatchTime.now().uptimeNanoseconds
                let top = logits.max() ?? 0
                let exps = logits.map { exp(Double($0 - top)) }
                let sum = exps.reduce(0, +)
                probabilities = zip(bundle.labels, exps).map { (label: $0.0, value: $0.1 / sum) }
                latency = String(format: "tokenize %.2f ms · inference %.2f ms",
                                 Double(tokenized - start) / 1e6, Double(done - tokenized) / 1e6)
            }
            let best = probabilities.indices.max { probabilities[$0].value < probabilities[$1].value } ?? 0
            prediction = bundle.labels[best]
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
