package org.pipeline.demo.tokenizer

import java.io.File

/**
 * Command-line check of the tokenizer on the JVM (used by tests/test_kotlin_tokenizer.py):
 *
 *     java -cp tokenizer.jar org.pipeline.demo.tokenizer.TokenizerCliKt tokenizer.json texts.json 128 [nopad] > out.json
 *
 * `nopad`: exactly the tokens of each text (what the apps feed a dynamic-length model), else padded to max_length.
 * texts.json is a JSON list of strings; the output is a JSON list with, per text,
 * {"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}.
 */
fun main(args: Array<String>) {
    if (args.size !in 3..4 || (args.size == 4 && args[3] != "nopad")) {
        System.err.println("usage: TokenizerCli <tokenizer.json> <texts.json> <max_length> [nopad]")
        kotlin.system.exitProcess(2)
    }
    val tokenizer = Tokenizer.fromJson(File(args[0]).readText(Charsets.UTF_8))
    val texts = Json.parse(File(args[1]).readText(Charsets.UTF_8)).arr("texts").map { it.str("text") }
    val maxLength = args[2].toInt()
    val rows = texts.map { text ->
        val e = tokenizer.encode(text, maxLength, pad = args.size == 3)
        mapOf("input_ids" to e.inputIds, "attention_mask" to e.attentionMask, "token_type_ids" to e.tokenTypeIds)
    }
    System.out.write(Json.write(mapOf("kind" to tokenizer.kind, "rows" to rows)).toByteArray(Charsets.UTF_8))
    System.out.flush()
}
