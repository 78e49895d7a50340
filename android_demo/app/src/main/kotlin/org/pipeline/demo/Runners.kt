package org.pipeline.demo

import android.content.Context
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.pipeline.demo.core.InputTensor
import org.pipeline.demo.core.LiteRtBinding
import org.pipeline.demo.core.ManifestValues
import org.pipeline.demo.core.ModelFile
import org.pipeline.demo.core.ModelRunner
import org.pipeline.demo.core.Outputs
import org.pipeline.demo.core.Runtime
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.tensorflow.lite.Interpreter

/**
 * The runtime adapters: each wraps one runtime call around the core (android_demo/core), which builds the inputs
 * (values, shape, dtype, order), decodes the outputs and picks the runtime from the manifest. Not compiled on the
 * pipeline's CI (no Android SDK or Maven there): see README, "What is verified where".
 */
object Runners {
    /** `context`: MediaPipe reads the model from the APK's assets; `numLabels`: MediaPipe's categories to label order. */
    fun open(file: ModelFile, path: File, context: Context, numLabels: Int, threads: Int = 2): ModelRunner =
        when (Runtime.of(file)) {
            Runtime.EXECUTORCH -> ExecuTorchRunner(file, path)
            Runtime.LITERT -> LiteRtRunner(file, path, threads)
            Runtime.MEDIAPIPE -> MediaPipeRunner(file, context, numLabels)
        }
}

/** ExecuTorch .pte: the inputs positional, in the manifest's order, int64 or int32 as the manifest says. */
class ExecuTorchRunner(override val file: ModelFile, path: File) : ModelRunner {
    private val module: Module = Module.load(path.absolutePath)

    override fun forward(inputs: List<InputTensor>): FloatArray {
        val values = inputs.map {
            EValue.from(if (it.dtype == ManifestValues.DTYPE_INT64) Tensor.fromBlob(it.longs(), it.shape) else Tensor.fromBlob(it.values, it.shape))
        }
        return module.forward(*values.toTypedArray())[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()
}

/** LiteRT .tflite: the inputs in the interpreter's order (LiteRtBinding), a dynamic file resized to the text. */
class LiteRtRunner(override val file: ModelFile, path: File, threads: Int) : ModelRunner {
    private val interpreter = Interpreter(path, Interpreter.Options().setNumThreads(threads))
    private val binding = LiteRtBinding.indices(file, (0 until interpreter.inputTensorCount).map { interpreter.getInputTensor(it).name() })

    override fun forward(inputs: List<InputTensor>): FloatArray {
        val ordered = LiteRtBinding.ordered(inputs, binding)
        ordered.forEachIndexed { i, input ->
            if (!interpreter.getInputTensor(i).shape().contentEquals(input.intShape())) interpreter.resizeInput(i, input.intShape())
        }
        interpreter.allocateTensors()
        val out = interpreter.getOutputTensor(0)
        val buffer = ByteBuffer.allocateDirect(out.numBytes()).order(ByteOrder.nativeOrder())
        interpreter.runForMultipleInputsOutputs(Array<Any>(ordered.size) { ordered[it].toBuffer() }, mapOf<Int, Any>(0 to buffer))
        val q = out.quantizationParams()
        return Outputs.decode(buffer, out.dataType().name.lowercase(), out.numElements(), q.scale, q.zeroPoint)
    }

    override fun close() = interpreter.close()
}
