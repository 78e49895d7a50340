import ExecuTorch
import Foundation
import TensorFlowLite

/// The runtime adapters: each wraps one runtime call around the core (Core/), which builds the inputs (values,
/// shape, dtype, order), decodes the outputs and picks the runtime from the manifest. Only Xcode compiles these
/// (see README, "What is verified where").
enum Runners {
    static func open(_ file: ModelFile, in bundle: ModelBundle, threads: Int = 2) throws -> ModelRunner {
        switch try Runtime.of(file) {
        case .executorch: return try ExecuTorchRunner(file: file, url: bundle.url(file.path))
        case .litert: return try LiteRTRunner(file: file, url: bundle.url(file.path), threads: threads)
        case .mediapipe: return try MediaPipeRunner(file: file, url: bundle.url(file.path), numLabels: bundle.numLabels)
        }
    }
}

/// ExecuTorch .pte: the inputs positional, in the manifest's order, int64 or int32 as the manifest says.
final class ExecuTorchRunner: ModelRunner {
    let file: ModelFile
    private let module: Module

    init(file: ModelFile, url: URL) throws {
        self.file = file
        module = Module(filePath: url.path)
        try module.load("forward")
    }

    func forward(_ inputs: [InputTensor]) throws -> [Float] {
        let values = inputs.map { input in
            input.dtype == ManifestValues.dtypeInt64
                ? Value(Tensor<Int64>(input.values.map { Int64($0) }, shape: input.shape))
                : Value(Tensor<Int32>(input.values.map { Int32($0) }, shape: input.shape))
        }
        guard let logits: Tensor<Float> = try module.forward(values).first?.tensor() else {
            throw BundleError.invalid("\(file.path): no float tensor output")
        }
        return logits.scalars()
    }
}

/// LiteRT .tflite: the inputs in the interpreter's order (LiteRTBinding), a dynamic file resized to the text.
final class LiteRTRunner: ModelRunner {
    let file: ModelFile
    private let interpreter: Interpreter
    private let binding: [Int]

    init(file: ModelFile, url: URL, threads: Int) throws {
        self.file = file
        var options = Interpreter.Options()
        options.threadCount = threads
        interpreter = try Interpreter(modelPath: url.path, options: options)
        try interpreter.allocateTensors()
        let names = try (0..<interpreter.inputTensorCount).map { try interpreter.input(at: $0).name }
        binding = try LiteRTBinding.indices(file, tensorNames: names)
    }

    func forward(_ inputs: [InputTensor]) throws -> [Float] {
        let ordered = try LiteRTBinding.ordered(inputs, binding)
        for (index, input) in ordered.enumerated() {
            if try interpreter.input(at: index).shape.dimensions != input.shape {
                try interpreter.resizeInput(at: index, to: TensorFlowLite.Tensor.Shape(input.shape))
            }
        }
        try interpreter.allocateTensors()
        for (index, input) in ordered.enumerated() { try interpreter.copy(input.data(), toInputAt: index) }
        try interpreter.invoke()
        let output = try interpreter.output(at: 0)
        let dtype: String
        switch output.dataType {
        case .float32: dtype = ManifestValues.dtypeFloat32
        case .int8: dtype = ManifestValues.dtypeInt8
        case .uInt8: dtype = ManifestValues.dtypeUint8
        default: dtype = "\(output.dataType)"
        }
        let q = output.quantizationParameters
        return try Outputs.decode(output.data, dtype: dtype, count: output.shape.dimensions.reduce(1, *),
                                  scale: q?.scale ?? 0, zeroPoint: q?.zeroPoint ?? 0)
    }
}
