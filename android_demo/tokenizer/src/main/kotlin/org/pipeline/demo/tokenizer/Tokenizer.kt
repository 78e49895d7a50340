package org.pipeline.demo.tokenizer

import java.text.Normalizer as JavaNormalizer

/**
 * A pure-Kotlin reader of Hugging Face `tokenizer.json` files that reproduces the Rust `tokenizers` library
 * (what transformers' AutoTokenizer runs) for the two tokenizers ALBERT-family models ship with:
 *
 *  - WordPiece (BERT): BertNormalizer, BertPreTokenizer, WordPiece with a continuing-subword prefix;
 *  - Unigram (SentencePiece, real ALBERT checkpoints): Replace / NFKD / StripAccents / Lowercase / Precompiled
 *    normalizers, WhitespaceSplit + Metaspace pre-tokenizers, the Unigram best-path search.
 *
 * Added tokens ([CLS], [MASK], <pad> ...) are split out of the raw text first, exactly as `tokenizers` does, and
 * the post-processor template ([CLS] A [SEP]), truncation to max_length and right padding follow.
 *
 * No Android APIs: this file compiles with a bare kotlinc and is checked against the Python tokenizer in CI
 * (tests/test_kotlin_tokenizer.py).
 */
class Tokenizer private constructor(root: Map<String, Any?>) {
    /** "wordpiece" or "unigram": the model type in tokenizer.json, lower-cased. */
    val kind: String
    private val normalizer: Norm?
    private val preTokenizer: PreTok?
    private val model: Model
    private val addedTokens: List<AddedToken>
    private val template: List<TemplateItem>
    private val padId: Int
    private val vocab: Map<String, Int>

    init {
        val modelJson = root["model"].obj("model")
        val type = modelJson["type"].str("model.type")
        model = when (type) {
            "WordPiece" -> WordPieceModel(modelJson)
            "Unigram" -> UnigramModel(modelJson)
            else -> throw IllegalArgumentException("tokenizer.json: model type '$type' is not supported (WordPiece, Unigram)")
        }
        kind = type.lowercase()
        vocab = model.vocab
        normalizer = root["normalizer"]?.let { parseNormalizer(it.obj("normalizer")) }
        preTokenizer = root["pre_tokenizer"]?.let { parsePreTokenizer(it.obj("pre_tokenizer")) }
        addedTokens = (root["added_tokens"] as? List<*> ?: emptyList<Any?>()).map { entry ->
            val t = entry.obj("added_tokens[]")
            AddedToken(
                id = t["id"].num("added_tokens[].id").toInt(),
                content = t["content"].str("added_tokens[].content"),
                singleWord = t["single_word"] as? Boolean ?: false,
                lstrip = t["lstrip"] as? Boolean ?: false,
                rstrip = t["rstrip"] as? Boolean ?: false,
                normalized = t["normalized"] as? Boolean ?: true,
                special = t["special"] as? Boolean ?: false,
            )
        }
        template = parsePostProcessor(root["post_processor"]?.obj("post_processor"))
        val padding = root["padding"] as? Map<*, *>
        padId = (padding?.get("pad_id") as? Number)?.toInt()
            ?: listOf("[PAD]", "<pad>").firstNotNullOfOrNull { tokenId(it) }
            ?: 0
    }

    /** Id of a token string, from the added tokens or the model's vocabulary; null when absent. */
    fun tokenId(token: String): Int? = addedTokens.firstOrNull { it.content == token }?.id ?: vocab[token]

    /** Token ids of one text without special tokens, truncation or padding. */
    fun tokenizeToIds(text: String): List<Int> {
        val ids = ArrayList<Int>()
        for (segment in splitOnAddedTokens(text, addedTokens.filter { !it.normalized })) {
            if (segment.tokenId != null) { ids.add(segment.tokenId); continue }
            val normalized = normalizer?.apply(segment.text) ?: segment.text
            for (inner in splitOnAddedTokens(normalized, addedTokens.filter { it.normalized })) {
                if (inner.tokenId != null) { ids.add(inner.tokenId); continue }
                val words = preTokenizer?.split(listOf(Piece(inner.text, segment.start == 0 && inner.start == 0)))
                    ?: listOf(Piece(inner.text, true))
                for (word in words) if (word.text.isNotEmpty()) ids.addAll(model.tokenize(word.text))
            }
        }
        return ids
    }

    /** The model inputs for one text: [CLS] ids [SEP], truncated to maxLength and right-padded with the pad id
     *  (`pad`, static files), or exactly the tokens (`pad = false`: dynamic files, shape [1, length]). */
    fun encode(text: String, maxLength: Int, pad: Boolean = true): Encoding {
        require(maxLength > 0) { "maxLength must be positive" }
        val special = template.sumOf { if (it.isSequence) 0 else it.ids.size }
        val body = tokenizeToIds(text).let { if (it.size + special > maxLength) it.subList(0, maxOf(0, maxLength - special)) else it }
        val ids = ArrayList<Int>(maxLength)
        val types = ArrayList<Int>(maxLength)
        for (item in template) {
            val part = if (item.isSequence) body else item.ids
            ids.addAll(part)
            repeat(part.size) { types.add(item.typeId) }
        }
        val length = minOf(ids.size, maxLength)
        val size = if (pad) maxLength else length
        val inputIds = IntArray(size) { if (it < length) ids[it] else padId }
        val mask = IntArray(size) { if (it < length) 1 else 0 }
        val typeIds = IntArray(size) { if (it < length) types[it] else 0 }
        return Encoding(inputIds, mask, typeIds)
    }

    companion object {
        /** Reads the text of a tokenizer.json file. */
        fun fromJson(text: String): Tokenizer = Tokenizer(Json.parse(text).obj("tokenizer.json"))
    }

    // ---------------------------------------------------------------- added tokens

    private data class AddedToken(
        val id: Int, val content: String, val singleWord: Boolean, val lstrip: Boolean,
        val rstrip: Boolean, val normalized: Boolean, val special: Boolean,
    )

    private class Segment(val text: String, val start: Int, val tokenId: Int?)

    /** Leftmost-longest matching of the added tokens, as the `tokenizers` AddedVocabulary does. */
    private fun splitOnAddedTokens(text: String, tokens: List<AddedToken>): List<Segment> {
        if (tokens.isEmpty() || text.isEmpty()) return listOf(Segment(text, 0, null))
        val out = ArrayList<Segment>()
        var last = 0
        var i = 0
        while (i < text.length) {
            var best: AddedToken? = null
            for (t in tokens) {
                if (t.content.isNotEmpty() && text.startsWith(t.content, i) && (best == null || t.content.length > best.content.length)) {
                    if (t.singleWord) {
                        val before = if (i > 0) text.codePointBefore(i) else -1
                        val endIdx = i + t.content.length
                        val after = if (endIdx < text.length) text.codePointAt(endIdx) else -1
                        if ((before != -1 && isWordChar(before)) || (after != -1 && isWordChar(after))) continue
                    }
                    best = t
                }
            }
            if (best == null) { i++; continue }
            var start = i
            var end = i + best.content.length
            if (best.lstrip) while (start > last && isWhitespace(text.codePointBefore(start))) start -= Character.charCount(text.codePointBefore(start))
            if (best.rstrip) while (end < text.length && isWhitespace(text.codePointAt(end))) end += Character.charCount(text.codePointAt(end))
            if (start > last) out.add(Segment(text.substring(last, start), last, null))
            out.add(Segment(best.content, start, best.id))
            last = end
            i = end
        }
        if (last < text.length) out.add(Segment(text.substring(last), last, null))
        return out
    }

    private fun isWordChar(cp: Int) = Character.isLetterOrDigit(cp) || cp == '_'.code

    // ---------------------------------------------------------------- post-processor

    private class TemplateItem(val isSequence: Boolean, val ids: List<Int>, val typeId: Int)

    private fun parsePostProcessor(json: Map<String, Any?>?): List<TemplateItem> {
        val seq = TemplateItem(true, emptyList(), 0)
        if (json == null) return listOf(seq)
        return when (val type = json["type"].str("post_processor.type")) {
            "TemplateProcessing" -> {
                val specials = json["special_tokens"].obj("post_processor.special_tokens")
                json["single"].arr("post_processor.single").map { itemAny ->
                    val item = itemAny.obj("post_processor.single[]")
                    val special = item["SpecialToken"] as? Map<*, *>
                    if (special != null) {
                        val name = special["id"].str("SpecialToken.id")
                        val ids = specials[name].obj("special_tokens.$name")["ids"].arr("ids").map { it.num("id").toInt() }
                        TemplateItem(false, ids, (special["type_id"] as? Number)?.toInt() ?: 0)
                    } else {
                        val s = item["Sequence"].obj("Sequence")
                        TemplateItem(true, emptyList(), (s["type_id"] as? Number)?.toInt() ?: 0)
                    }
                }
            }
            "BertProcessing", "RobertaProcessing" -> {
                val cls = json["cls"].arr("cls")[1].num("cls id").toInt()
                val sep = json["sep"].arr("sep")[1].num("sep id").toInt()
                listOf(TemplateItem(false, listOf(cls), 0), seq, TemplateItem(false, listOf(sep), 0))
            }
            else -> throw IllegalArgumentException("tokenizer.json: post_processor '$type' is not supported")
        }
    }

    // ---------------------------------------------------------------- normalizers

    private fun interface Norm { fun apply(s: String): String }

    private fun parseNormalizer(json: Map<String, Any?>): Norm {
        return when (val type = json["type"].str("normalizer.type")) {
            "Sequence" -> {
                val parts = json["normalizers"].arr("normalizers").map { parseNormalizer(it.obj("normalizers[]")) }
                Norm { s -> parts.fold(s) { acc, n -> n.apply(acc) } }
            }
            "BertNormalizer" -> {
                val clean = json["clean_text"] as? Boolean ?: true
                val chinese = json["handle_chinese_chars"] as? Boolean ?: true
                val lower = json["lowercase"] as? Boolean ?: true
                val strip = json["strip_accents"] as? Boolean ?: lower
                Norm { s -> bertNormalize(s, clean, chinese, strip, lower) }
            }
            "Lowercase" -> Norm(::lowercase)
            "NFD" -> Norm { JavaNormalizer.normalize(it, JavaNormalizer.Form.NFD) }
            "NFKD" -> Norm { JavaNormalizer.normalize(it, JavaNormalizer.Form.NFKD) }
            "NFC" -> Norm { JavaNormalizer.normalize(it, JavaNormalizer.Form.NFC) }
            "NFKC" -> Norm { JavaNormalizer.normalize(it, JavaNormalizer.Form.NFKC) }
            "StripAccents" -> Norm { s -> filterCodePoints(s) { !isCombiningMark(it) } }
            "Strip" -> {
                val left = json["strip_left"] as? Boolean ?: true
                val right = json["strip_right"] as? Boolean ?: true
                Norm { s -> stripWhitespace(s, left, right) }
            }
            "Prepend" -> {
                val prefix = json["prepend"].str("prepend")
                Norm { s -> if (s.isEmpty()) s else prefix + s }
            }
            "Replace" -> {
                val pattern = json["pattern"].obj("Replace.pattern")
                val content = json["content"].str("Replace.content")
                val literal = pattern["String"] as? String
                if (literal != null) Norm { s -> if (literal.isEmpty()) s else s.replace(literal, content) }
                else {
                    val regex = Regex(pattern["Regex"].str("Replace.pattern.Regex"))
                    Norm { s -> regex.replace(s, Regex.escapeReplacement(content)) }
                }
            }
            "Precompiled" -> {
                val map = json["precompiled_charsmap"] as? String
                if (map.isNullOrEmpty()) Norm { it } else PrecompiledCharsMap(java.util.Base64.getDecoder().decode(map))::normalize.let { f -> Norm { f(it) } }
            }
            else -> throw IllegalArgumentException("tokenizer.json: normalizer '$type' is not supported")
        }
    }

    // ---------------------------------------------------------------- pre-tokenizers

    /** A pre-token; `atStart` tells whether it begins at offset 0 of the original text (Metaspace "first"). */
    private class Piece(val text: String, val atStart: Boolean)

    private fun interface PreTok { fun split(pieces: List<Piece>): List<Piece> }

    private fun parsePreTokenizer(json: Map<String, Any?>): PreTok {
        return when (val type = json["type"].str("pre_tokenizer.type")) {
            "Sequence" -> {
                val parts = json["pretokenizers"].arr("pretokenizers").map { parsePreTokenizer(it.obj("pretokenizers[]")) }
                PreTok { pieces -> parts.fold(pieces) { acc, p -> p.split(acc) } }
            }
            "BertPreTokenizer" -> PreTok { pieces -> pieces.flatMap { splitWords(it, isolatePunctuation = true) } }
            "WhitespaceSplit" -> PreTok { pieces -> pieces.flatMap { splitWords(it, isolatePunctuation = false) } }
            "Whitespace" -> {
                val unicodeRegex = java.util.regex.Pattern.compile("\\w+|[^\\w\\s]+", java.util.regex.Pattern.UNICODE_CHARACTER_CLASS)
                PreTok { pieces ->
                    pieces.flatMap { p ->
                        val m = unicodeRegex.matcher(p.text)
                        val out = ArrayList<Piece>()
                        while (m.find()) out.add(Piece(m.group(), p.atStart && m.start() == 0))
                        out
                    }
                }
            }
            "Metaspace" -> {
                val replacement = json["replacement"].str("Metaspace.replacement")
                val scheme = json["prepend_scheme"] as? String
                    ?: if (json["add_prefix_space"] as? Boolean != false) "always" else "never"
                val split = json["split"] as? Boolean ?: true
                PreTok { pieces -> pieces.flatMap { metaspace(it, replacement, scheme, split) } }
            }
            else -> throw IllegalArgumentException("tokenizer.json: pre_tokenizer '$type' is not supported")
        }
    }

    private fun splitWords(piece: Piece, isolatePunctuation: Boolean): List<Piece> {
        val out = ArrayList<Piece>()
        val s = piece.text
        var wordStart = -1
        var i = 0
        while (i < s.length) {
            val cp = s.codePointAt(i)
            val n = Character.charCount(cp)
            if (isWhitespace(cp)) {
                if (wordStart >= 0) { out.add(Piece(s.substring(wordStart, i), piece.atStart && wordStart == 0)); wordStart = -1 }
            } else if (isolatePunctuation && isBertPunctuation(cp)) {
                if (wordStart >= 0) { out.add(Piece(s.substring(wordStart, i), piece.atStart && wordStart == 0)); wordStart = -1 }
                out.add(Piece(s.substring(i, i + n), piece.atStart && i == 0))
            } else if (wordStart < 0) {
                wordStart = i
            }
            i += n
        }
        if (wordStart >= 0) out.add(Piece(s.substring(wordStart), piece.atStart && wordStart == 0))
        return out
    }

    private fun metaspace(piece: Piece, replacement: String, scheme: String, split: Boolean): List<Piece> {
        var s = piece.text.replace(" ", replacement)
        val prepend = when (scheme) {
            "always" -> true
            "first" -> piece.atStart
            else -> false
        }
        if (prepend && !s.startsWith(replacement)) s = replacement + s
        if (!split) return listOf(Piece(s, piece.atStart))
        val out = ArrayList<Piece>()
        var start = 0
        var i = s.indexOf(replacement, 1)
        while (i >= 0) {
            if (i > start) out.add(Piece(s.substring(start, i), piece.atStart && start == 0))
            start = i
            i = s.indexOf(replacement, i + replacement.length)
        }
        if (start < s.length) out.add(Piece(s.substring(start), piece.atStart && start == 0))
        return out
    }

    // ---------------------------------------------------------------- models

    private interface Model {
        val vocab: Map<String, Int>
        fun tokenize(word: String): List<Int>
    }

    private class WordPieceModel(json: Map<String, Any?>) : Model {
        override val vocab: Map<String, Int> =
            json["vocab"].obj("model.vocab").mapValues { (_, v) -> v.num("vocab id").toInt() }
        private val unkId: Int = vocab[json["unk_token"].str("model.unk_token")]
            ?: throw IllegalArgumentException("WordPiece: unk_token not in vocab")
        private val prefix: String = json["continuing_subword_prefix"] as? String ?: "##"
        private val maxChars: Int = (json["max_input_chars_per_word"] as? Number)?.toInt() ?: 100

        override fun tokenize(word: String): List<Int> {
            if (word.codePointCount(0, word.length) > maxChars) return listOf(unkId)
            val out = ArrayList<Int>()
            var start = 0
            while (start < word.length) {
                var end = word.length
                var found: Int? = null
                while (start < end) {
                    val sub = if (start > 0) prefix + word.substring(start, end) else word.substring(start, end)
                    val id = vocab[sub]
                    if (id != null) { found = id; break }
                    end -= Character.charCount(word.codePointBefore(end))
                }
                if (found == null) return listOf(unkId)
                out.add(found)
                start = end
            }
            return out
        }
    }

    private class UnigramModel(json: Map<String, Any?>) : Model {
        private val pieces: List<String>
        private val scores: DoubleArray
        override val vocab: Map<String, Int>
        private val unkId: Int
        private val maxPieceChars: Int
        private val minScore: Double

        init {
            val list = json["vocab"].arr("model.vocab")
            pieces = list.map { it.arr("vocab[]")[0].str("piece") }
            scores = DoubleArray(list.size) { list[it].arr("vocab[]")[1].num("score").toDouble() }
            val map = HashMap<String, Int>(list.size * 2)
            pieces.forEachIndexed { i, p -> map[p] = i }
            vocab = map
            unkId = (json["unk_id"] as? Number)?.toInt() ?: throw IllegalArgumentException("Unigram: unk_id missing")
            if (json["byte_fallback"] == true) throw IllegalArgumentException("Unigram: byte_fallback is not supported")
            maxPieceChars = pieces.maxOfOrNull { it.codePointCount(0, it.length) } ?: 1
            minScore = scores.minOrNull() ?: 0.0
        }

        /** The optimized best-path search of `tokenizers`' Unigram::encode_optimized, with unknown pieces fused. */
        override fun tokenize(word: String): List<Int> {
            val n = word.length
            val unkScore = minScore - 10.0
            val bestScore = DoubleArray(n + 1)
            val startsAt = IntArray(n + 1) { -1 }
            val nodeId = IntArray(n + 1)
            var start = 0
            while (start < n) {
                val base = bestScore[start]
                val charLen = Character.charCount(word.codePointAt(start))
                var hasSingle = false
                var end = start
                var chars = 0
                while (end < n && chars < maxPieceChars) {
                    end += Character.charCount(word.codePointAt(end))
                    chars++
                    val id = vocab[word.substring(start, end)] ?: continue
                    val candidate = scores[id] + base
                    if (startsAt[end] < 0 || candidate > bestScore[end]) {
                        bestScore[end] = candidate; startsAt[end] = start; nodeId[end] = id
                    }
                    if (end - start == charLen) hasSingle = true
                }
                if (!hasSingle) {
                    val target = start + charLen
                    val candidate = unkScore + base
                    if (startsAt[target] < 0 || candidate > bestScore[target]) {
                        bestScore[target] = candidate; startsAt[target] = start; nodeId[target] = unkId
                    }
                }
                start += charLen
            }
            val tokens = ArrayList<String>()
            val unk = ArrayList<String>()
            var endsAt = n
            while (endsAt > 0) {
                val s = startsAt[endsAt]
                if (nodeId[endsAt] == unkId) unk.add(word.substring(s, endsAt))
                else {
                    if (unk.isNotEmpty()) { tokens.add(unk.reversed().joinToString("")); unk.clear() }
                    tokens.add(word.substring(s, endsAt))
                }
                endsAt = s
            }
            if (unk.isNotEmpty()) tokens.add(unk.reversed().joinToString(""))
            tokens.reverse()
            return tokens.map { vocab[it] ?: unkId }
        }
    }
}

/** Model inputs of one text, each of length max_length. */
class Encoding(val inputIds: IntArray, val attentionMask: IntArray, val tokenTypeIds: IntArray) {
    /** The input named `name` (input_ids, attention_mask, token_type_ids); null for other names. */
    fun byName(name: String): IntArray? = when (name) {
        "input_ids" -> inputIds
        "attention_mask" -> attentionMask
        "token_type_ids" -> tokenTypeIds
        else -> null
    }
}

/**
 * SentencePiece's precompiled normalization map (a darts-clone double-array trie followed by the replacement
 * strings), applied like `tokenizers`' Precompiled normalizer: per grapheme cluster when it is shorter than
 * 6 UTF-8 bytes, otherwise per code point.
 */
internal class PrecompiledCharsMap(blob: ByteArray) {
    private val units: IntArray
    private val normalized: ByteArray

    init {
        require(blob.size >= 4) { "Precompiled: charsmap too short" }
        val trieSize = (blob[0].toInt() and 0xFF) or ((blob[1].toInt() and 0xFF) shl 8) or
            ((blob[2].toInt() and 0xFF) shl 16) or ((blob[3].toInt() and 0xFF) shl 24)
        require(trieSize % 4 == 0 && 4 + trieSize <= blob.size) { "Precompiled: bad trie size" }
        units = IntArray(trieSize / 4) { i ->
            val o = 4 + i * 4
            (blob[o].toInt() and 0xFF) or ((blob[o + 1].toInt() and 0xFF) shl 8) or
                ((blob[o + 2].toInt() and 0xFF) shl 16) or ((blob[o + 3].toInt() and 0xFF) shl 24)
        }
        normalized = blob.copyOfRange(4 + trieSize, blob.size)
    }

    private fun hasLeaf(u: Int) = (u ushr 8) and 1 == 1
    private fun value(u: Int) = u and 0x7FFFFFFF
    private fun label(u: Int) = u and (0x80000000.toInt() or 0xFF)
    private fun offset(u: Int) = (u ushr 10) shl ((u and (1 shl 9)) ushr 6)

    /** The replacement of the shortest key that prefixes `chunk`, or null. */
    private fun transform(chunk: ByteArray): String? {
        var pos = 0
        var unit = units[pos]
        pos = pos xor offset(unit)
        for (b in chunk) {
            val c = b.toInt() and 0xFF
            if (c == 0) break
            pos = pos xor c
            if (pos < 0 || pos >= units.size) return null
            unit = units[pos]
            if (label(unit) != c) return null
            pos = pos xor offset(unit)
            if (hasLeaf(unit)) {
                val start = value(units[pos])
                var end = start
                while (end < normalized.size && normalized[end] != 0.toByte()) end++
                return String(normalized, start, end - start, Charsets.UTF_8)
            }
        }
        return null
    }

    fun normalize(s: String): String {
        val out = StringBuilder(s.length)
        for (cluster in graphemes(s)) {
            val bytes = cluster.toByteArray(Charsets.UTF_8)
            if (bytes.size < 6) {
                val whole = transform(bytes)
                if (whole != null) { out.append(whole); continue }
            }
            var i = 0
            while (i < cluster.length) {
                val n = Character.charCount(cluster.codePointAt(i))
                val part = cluster.substring(i, i + n)
                out.append(transform(part.toByteArray(Charsets.UTF_8)) ?: part)
                i += n
            }
        }
        return out.toString()
    }
}

// -------------------------------------------------------------------- Unicode helpers (Rust `char` semantics)

/** Rust's char::is_whitespace: the Unicode White_Space property. */
internal fun isWhitespace(cp: Int): Boolean = when (cp) {
    in 0x09..0x0D, 0x20, 0x85, 0xA0, 0x1680, in 0x2000..0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000 -> true
    else -> false
}

private fun isControl(cp: Int): Boolean {
    if (cp == '\t'.code || cp == '\n'.code || cp == '\r'.code) return false
    return when (Character.getType(cp).toByte()) {
        Character.CONTROL, Character.FORMAT, Character.PRIVATE_USE, Character.SURROGATE -> true
        else -> false
    }
}

private fun isPunctuation(cp: Int): Boolean = when (Character.getType(cp).toByte()) {
    Character.CONNECTOR_PUNCTUATION, Character.DASH_PUNCTUATION, Character.START_PUNCTUATION,
    Character.END_PUNCTUATION, Character.INITIAL_QUOTE_PUNCTUATION, Character.FINAL_QUOTE_PUNCTUATION,
    Character.OTHER_PUNCTUATION -> true
    else -> false
}

private fun isBertPunctuation(cp: Int): Boolean =
    (cp in 0x21..0x2F) || (cp in 0x3A..0x40) || (cp in 0x5B..0x60) || (cp in 0x7B..0x7E) || isPunctuation(cp)

private fun isChineseChar(cp: Int): Boolean =
    cp in 0x4E00..0x9FFF || cp in 0x3400..0x4DBF || cp in 0x20000..0x2A6DF || cp in 0x2A700..0x2B73F ||
        cp in 0x2B740..0x2B81F || cp in 0x2B920..0x2CEAF || cp in 0xF900..0xFAFF || cp in 0x2F800..0x2FA1F

private fun isNonSpacingMark(cp: Int) = Character.getType(cp).toByte() == Character.NON_SPACING_MARK

private fun isCombiningMark(cp: Int): Boolean = when (Character.getType(cp).toByte()) {
    Character.NON_SPACING_MARK, Character.COMBINING_SPACING_MARK, Character.ENCLOSING_MARK -> true
    else -> false
}

private inline fun filterCodePoints(s: String, keep: (Int) -> Boolean): String {
    val sb = StringBuilder(s.length)
    var i = 0
    while (i < s.length) {
        val cp = s.codePointAt(i)
        if (keep(cp)) sb.appendCodePoint(cp)
        i += Character.charCount(cp)
    }
    return sb.toString()
}

/** Rust's char::to_lowercase applied per code point (no context-dependent rules such as final sigma). */
private fun lowercase(s: String): String {
    val sb = StringBuilder(s.length)
    var i = 0
    while (i < s.length) {
        val cp = s.codePointAt(i)
        if (cp == 0x130) sb.append("i\u0307") else sb.appendCodePoint(Character.toLowerCase(cp))
        i += Character.charCount(cp)
    }
    return sb.toString()
}

private fun stripWhitespace(s: String, left: Boolean, right: Boolean): String {
    var start = 0
    var end = s.length
    if (left) while (start < end && isWhitespace(s.codePointAt(start))) start += Character.charCount(s.codePointAt(start))
    if (right) while (end > start && isWhitespace(s.codePointBefore(end))) end -= Character.charCount(s.codePointBefore(end))
    return s.substring(start, end)
}

private fun bertNormalize(s: String, clean: Boolean, chinese: Boolean, stripAccents: Boolean, lower: Boolean): String {
    var t = s
    if (clean) {
        val sb = StringBuilder(t.length)
        var i = 0
        while (i < t.length) {
            val cp = t.codePointAt(i)
            i += Character.charCount(cp)
            if (cp == 0 || cp == 0xFFFD || isControl(cp)) continue
            if (isWhitespace(cp)) sb.append(' ') else sb.appendCodePoint(cp)
        }
        t = sb.toString()
    }
    if (chinese) {
        val sb = StringBuilder(t.length)
        var i = 0
        while (i < t.length) {
            val cp = t.codePointAt(i)
            i += Character.charCount(cp)
            if (isChineseChar(cp)) sb.append(' ').appendCodePoint(cp).append(' ') else sb.appendCodePoint(cp)
        }
        t = sb.toString()
    }
    if (stripAccents) t = filterCodePoints(JavaNormalizer.normalize(t, JavaNormalizer.Form.NFD)) { !isNonSpacingMark(it) }
    if (lower) t = lowercase(t)
    return t
}

/**
 * Grapheme clusters, close enough to UAX #29 for the Precompiled normalizer (only clusters shorter than 6 UTF-8
 * bytes are looked up whole): CR LF, a base followed by extending / spacing marks and joiners, Hangul jamo runs.
 */
private fun graphemes(s: String): List<String> {
    val out = ArrayList<String>()
    var i = 0
    while (i < s.length) {
        val start = i
        val first = s.codePointAt(i)
        i += Character.charCount(first)
        if (first == '\r'.code) {
            if (i < s.length && s[i] == '\n') i++
            out.add(s.substring(start, i)); continue
        }
        if (isGraphemeControl(first)) { out.add(s.substring(start, i)); continue }
        var prev = first
        while (i < s.length) {
            val cp = s.codePointAt(i)
            if (isGraphemeExtend(cp) || hangulJoins(prev, cp)) {
                i += Character.charCount(cp); prev = cp
            } else break
        }
        out.add(s.substring(start, i))
    }
    return out
}

private fun isGraphemeControl(cp: Int): Boolean {
    if (cp == 0x200C || cp == 0x200D) return false
    return when (Character.getType(cp).toByte()) {
        Character.CONTROL, Character.FORMAT, Character.LINE_SEPARATOR, Character.PARAGRAPH_SEPARATOR -> true
        else -> false
    }
}

private fun isGraphemeExtend(cp: Int): Boolean = cp == 0x200C || cp == 0x200D || cp in 0xFF9E..0xFF9F ||
    cp in 0x1F3FB..0x1F3FF || isCombiningMark(cp)

private fun hangulType(cp: Int): Char = when {
    cp in 0x1100..0x115F || cp in 0xA960..0xA97C -> 'L'
    cp in 0x1160..0x11A7 || cp in 0xD7B0..0xD7C6 -> 'V'
    cp in 0x11A8..0x11FF || cp in 0xD7CB..0xD7FB -> 'T'
    cp in 0xAC00..0xD7A3 -> if ((cp - 0xAC00) % 28 == 0) 'P' else 'Q' // LV, LVT
    else -> ' '
}

private fun hangulJoins(prev: Int, cp: Int): Boolean {
    val a = hangulType(prev)
    val b = hangulType(cp)
    return (a == 'L' && (b == 'L' || b == 'V' || b == 'P' || b == 'Q')) ||
        ((a == 'V' || a == 'P') && (b == 'V' || b == 'T')) ||
        ((a == 'T' || a == 'Q') && b == 'T')
}
