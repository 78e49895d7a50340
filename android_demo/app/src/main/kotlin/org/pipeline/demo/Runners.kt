package org.pipeline.demo

import android.content.Context
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.pipeline.demo.tokenizer.Encoding
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter

/**
 * One loaded model file; `run` takes the tokenizer's encoding and returns the logits. A MediaPipe file
 * (`takesText`) takes the text itself instead: `classify(text)` returns probabilities in label order.
 */
interface ModelRunner : AutoCloseable {
    val file: ModelFile
    fun run(encoding: Encoding): FloatArray

    /** true for MediaPipe files: the tokenizer runs inside MediaPipe, from the file's metadata. */
    val takesText: Boolean get() = false
    fun classify(text: String): FloatArray =
        throw UnsupportedOperationException("${file.path} takes token ids, not text")

    companion object {
        /** `context` is needed for MediaPipe files only (MediaPipe reads the model from the APK's assets). */
        fun open(file: ModelFile, path: File, threads: Int = 2, context: Context? = null): ModelRunner = when (file.runtime) {
            ManifestValues.RUNTIME_EXECUTORCH -> ExecuTorchRunner(file, path)
            ManifestValues.RUNTIME_LITERT -> LiteRtRunner(file, path, threads)
            ManifestValues.RUNTIME_MEDIAPIPE -> MediaPipeRunner(file,
                context ?: throw IllegalArgumentException("${file.path}: MediaPipe needs an Android Context"))
            else -> throw IllegalArgumentException("${file.path}: unknown runtime '${file.runtime}'")
        }
    }
}

private fun inputValues(spec: TensorSpec, encoding: Encoding): IntArray =
    encoding.byName(spec.canonicalName)
        ?: throw IllegalArgumentException("model input '${spec.name}' is not one the tokenizer produces")

/** The manifest's shape with its dynamic dim (-1: any length up to the bundle's max_length) set to this input's length. */
private fun actualShape(spec: TensorSpec, size: Int): LongArray {
    val shape = spec.shape.copyOf()
    val dynamic = shape.indexOf(-1L)
    if (dynamic >= 0) shape[dynamic] = size.toLong()
    require(shape.fold(1L) { a, b -> a * b } == size.toLong()) {
        "input '${spec.name}' has $size values, its shape ${spec.shape.contentToString()} takes another count"
    }
    return shape
}

/** ExecuTorch .pte: inputs are positional, in the manifest's order, with the manifest's dtype. */
class ExecuTorchRunner(override val file: ModelFile, path: File) : ModelRunner {
    private val module: Module = Module.load(path.absolutePath)

    override fun run(encoding: Encoding): FloatArray {
        val inputs = file.inputs.map { spec ->
            val values = inputValues(spec, encoding)
            val shape = actualShape(spec, values.size)
            val tensor = when (spec.dtype) {
                ManifestValues.DTYPE_INT64 -> Tensor.fromBlob(LongArray(values.size) { values[it].toLong() }, shape)
                ManifestValues.DTYPE_INT32 -> Tensor.fromBlob(values, shape)
                else -> throw IllegalArgumentException("${file.path}: input dtype ${spec.dtype} not supported")
            }
            EValue.from(tensor)
        }
        val outputs = module.forward(*inputs.toTypedArray())
        return outputs[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()
}

/** LiteRT .tflite: inputs are bound by tensor name (runtimes rename and reorder them), dtype from the manifest. */
class LiteRtRunner(override val file: ModelFile, path: File, threads: Int) : ModelRunner {
    private val interpreter = Interpreter(path, Interpreter.Options().setNumThreads(threads))
    private val inputIndex: Map<TensorSpec, Int> = file.inputs.associateWith { spec ->
        val names = (0 until interpreter.inputTensorCount).map { interpreter.getInputTensor(it).name() }
        names.indexOf(spec.name).takeIf { it >= 0 }
            ?: names.indexOfFirst { it.contains(spec.canonicalName) }.takeIf { it >= 0 }
            ?: throw IllegalArgumentException("${file.path}: no input tensor named like '${spec.name}' in $names")
    }

    override fun run(encoding: Encoding): FloatArray {
        val inputs = arrayOfNulls<Any>(interpreter.inputTensorCount)
        for ((spec, index) in inputIndex) {
            val values = inputValues(spec, encoding)
            // a dynamic-length file (shape_signature [1, -1]) is resized to this text's length
            val shape = actualShape(spec, values.size).map { it.toInt() }.toIntArray()
            if (!interpreter.getInputTensor(index).shape().contentEquals(shape)) interpreter.resizeInput(index, shape)
            val buffer = when (spec.dtype) {
                ManifestValues.DTYPE_INT64 -> ByteBuffer.allocateDirect(values.size * 8).order(ByteOrder.nativeOrder())
                    .also { b -> values.forEach { b.putLong(it.toLong()) } }
                ManifestValues.DTYPE_INT32 -> ByteBuffer.allocateDirect(values.size * 4).order(ByteOrder.nativeOrder())
                    .also { b -> values.forEach { b.putInt(it) } }
                else -> throw IllegalArgumentException("${file.path}: input dtype ${spec.dtype} not supported")
            }
            buffer.rewind()
            inputs[index] = buffer
        }
        val out = interpreter.getOutputTensor(0)
        val outBuffer = ByteBuffer.allocateDirect(out.numBytes()).order(ByteOrder.nativeOrder())
        interpreter.runForMultipleInputsOutputs(inputs, mapOf(0 to outBuffer))
        outBuffer.rewind()
        val count = out.numElements()
        return when (out.dataType()) {
            DataType.FLOAT32 -> FloatArray(count) { outBuffer.float }
            DataType.INT8 -> { // a fully quantized model: dequantize with the tensor's own parameters
                val q = out.quantizationParams()
                FloatArray(count) { (outBuffer.get().toInt() - q.zeroPoint) * q.scale }
            }
            else -> throw IllegalStateException("${file.path}: output dtype ${out.dataType()} not supported")
        }
    }

    override fun close() = interpreter.close()
}
