package org.pipeline.demo.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.pipeline.demo.tokenizer.Encoding

/**
 * One input of one inference, ready for a runtime: the manifest's name and dtype, the actual shape (the dynamic
 * dimension set to this text's length) and the values. The runtime adapters only copy these into their tensor
 * types (ExecuTorch `Tensor.fromBlob(longs() or values, shape)`, LiteRT `toBuffer()`).
 */
class InputTensor(val spec: TensorSpec, val shape: LongArray, val values: IntArray) {
    val name: String get() = spec.name
    val dtype: String get() = spec.dtype

    /** The values widened to int64 (ExecuTorch `Tensor.fromBlob(LongArray, shape)`). */
    fun longs(): LongArray = LongArray(values.size) { values[it].toLong() }

    fun intShape(): IntArray = IntArray(shape.size) { shape[it].toInt() }

    /** The values in the manifest's dtype, in `order` (LiteRT: native order), as a rewound direct buffer. */
    fun toBuffer(order: ByteOrder = ByteOrder.nativeOrder()): ByteBuffer {
        val buffer = ByteBuffer.allocateDirect(values.size * ModelInputs.bytesPerValue(dtype)).order(order)
        when (dtype) {
            ManifestValues.DTYPE_INT64 -> values.forEach { buffer.putLong(it.toLong()) }
            ManifestValues.DTYPE_INT32 -> values.forEach { buffer.putInt(it) }
        }
        buffer.rewind()
        return buffer
    }
}

/**
 * The shape contract: what each model file is fed for one encoding, exactly as the pipeline's Python runners feed it
 * (pipeline/runtimes/base.py `fit_length`, pipeline/shapes.py `pad`): inputs in the manifest's order, each with the
 * manifest's dtype; a dynamic file gets the encoding as is ([1, S]); a static file gets exactly its declared shape,
 * a shorter encoding right-padded (input_ids with the pad id, attention_mask and token_type_ids with 0); an encoding
 * longer than the file takes is refused, never cut.
 */
object ModelInputs {
    fun bytesPerValue(dtype: String): Int = when (dtype) {
        ManifestValues.DTYPE_INT64 -> 8
        ManifestValues.DTYPE_INT32 -> 4
        else -> throw IllegalArgumentException("input dtype '$dtype' is not one this app feeds (int64, int32)")
    }

    fun build(file: ModelFile, encoding: Encoding, maxLength: Int, padId: Int): List<InputTensor> {
        require(!Runtime.of(file).takesText) { "${file.path} takes text, not token ids" }
        val length = encoding.inputIds.size
        require(encoding.attentionMask.size == length && encoding.tokenTypeIds.size == length) {
            "encoding arrays differ in length: ${encoding.inputIds.size}, ${encoding.attentionMask.size}, ${encoding.tokenTypeIds.size}"
        }
        require(length >= 1) { "an empty encoding: every text has at least [CLS]" }
        return file.inputs.map { spec ->
            bytesPerValue(spec.dtype) // an unsupported dtype fails here, before any runtime call
            val values = encoding.byName(spec.canonicalName)
                ?: throw IllegalArgumentException("${file.path}: model input '${spec.name}' is not one the tokenizer produces")
            require(spec.shape.isNotEmpty() && spec.shape.count { it == CoreRules.DYNAMIC_DIM } <= 1) {
                "${file.path}: input '${spec.name}' has shape ${spec.shape}: one sequence dimension expected"
            }
            if (spec.dynamic) {
                require(length <= maxLength) { tooLong(file, length, maxLength) }
                val shape = LongArray(spec.shape.size) { if (spec.shape[it] == CoreRules.DYNAMIC_DIM) length.toLong() else spec.shape[it] }
                checkCount(file, spec, shape, length)
                InputTensor(spec, shape, values)
            } else {
                val staticLength = spec.shape.last().toInt()
                require(length <= staticLength) { tooLong(file, length, staticLength) }
                val filler = when (spec.canonicalName) {
                    ManifestValues.INPUT_IDS -> padId
                    ManifestValues.ATTENTION_MASK -> CoreRules.PAD_ATTENTION_MASK
                    else -> CoreRules.PAD_TOKEN_TYPE_ID
                }
                val shape = spec.shape.toLongArray()
                checkCount(file, spec, shape, staticLength)
                InputTensor(spec, shape, IntArray(staticLength) { if (it < length) values[it] else filler })
            }
        }
    }

    private fun checkCount(file: ModelFile, spec: TensorSpec, shape: LongArray, count: Int) = require(
        shape.fold(1L) { a, b -> a * b } == count.toLong(),
    ) { "${file.path}: input '${spec.name}' has $count values, its shape ${spec.shape} takes another count" }

    private fun tooLong(file: ModelFile, length: Int, max: Int) =
        "${file.path}: input length $length exceeds the model's maximum $max tokens: truncate the text to " +
            "max_length tokens before running it"
}

/**
 * LiteRT binds inputs by position; runtimes rename and reorder them, so the manifest's inputs are matched to the
 * interpreter's input tensors by name: the tensor named exactly like the manifest input, else the one whose name
 * contains its canonical name (`serving_default_input_ids:0` for `input_ids`).
 */
object LiteRtBinding {
    /** For each input of `file` (manifest order), the index of its interpreter input among `tensorNames`. */
    fun indices(file: ModelFile, tensorNames: List<String>): IntArray {
        val found = file.inputs.map { spec ->
            tensorNames.indexOf(spec.name).takeIf { it >= 0 }
                ?: tensorNames.indexOfFirst { it.contains(spec.canonicalName) }.takeIf { it >= 0 }
                ?: throw IllegalArgumentException("${file.path}: no input tensor named like '${spec.name}' in $tensorNames")
        }
        require(found.toSet().size == found.size && found.size == tensorNames.size) {
            "${file.path}: manifest inputs ${file.inputs.map { it.name }} do not bind one-to-one to the tensors $tensorNames"
        }
        return found.toIntArray()
    }

    /** `inputs` (manifest order) rearranged into interpreter order: what `runForMultipleInputsOutputs` takes. */
    fun ordered(inputs: List<InputTensor>, indices: IntArray): List<InputTensor> {
        require(inputs.size == indices.size) { "${inputs.size} inputs for ${indices.size} bindings" }
        val byIndex = arrayOfNulls<InputTensor>(inputs.size)
        inputs.forEachIndexed { i, input -> byIndex[indices[i]] = input }
        return byIndex.map { it!! }
    }
}

/** A runtime's output tensor to float logits; an int8 / uint8 tensor is dequantized with its own parameters. */
object Outputs {
    fun decode(buffer: ByteBuffer, dtype: String, count: Int, scale: Float = 0f, zeroPoint: Int = 0): FloatArray {
        buffer.rewind()
        return when (dtype) {
            ManifestValues.DTYPE_FLOAT32 -> FloatArray(count) { buffer.float }
            ManifestValues.DTYPE_INT8 -> FloatArray(count) { (buffer.get().toInt() - zeroPoint) * scale }
            ManifestValues.DTYPE_UINT8 -> FloatArray(count) { ((buffer.get().toInt() and 0xFF) - zeroPoint) * scale }
            else -> throw IllegalArgumentException("output dtype '$dtype' is not supported (float32, int8, uint8)")
        }
    }
}
