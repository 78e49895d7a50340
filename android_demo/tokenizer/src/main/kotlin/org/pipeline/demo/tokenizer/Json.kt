package org.pipeline.demo.tokenizer

/**
 * A small, strict JSON reader (RFC 8259) with no dependencies beyond the Kotlin stdlib, so that this module
 * compiles with a bare kotlinc and runs on any JVM or Android.
 *
 * Values map to: JSON object -> Map<String, Any?> (insertion ordered), array -> List<Any?>, string -> String,
 * integer literal -> Long (beyond Long's range: Double), other number -> Double, true/false -> Boolean, null -> null.
 */
object Json {
    fun parse(text: String): Any? {
        val reader = Reader(text)
        reader.skipWhitespace()
        val value = reader.readValue()
        reader.skipWhitespace()
        if (reader.pos != text.length) reader.fail("trailing characters")
        return value
    }

    /** Serializes maps, lists, strings, numbers, booleans and null (used by the CLI and the app's reports). */
    fun write(value: Any?): String = StringBuilder().also { writeTo(it, value) }.toString()

    private fun writeTo(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is String -> writeString(out, value)
            is Boolean, is Int, is Long -> out.append(value.toString())
            is Float, is Double -> {
                val d = (value as Number).toDouble()
                if (d.isNaN() || d.isInfinite()) out.append("null") else out.append(d.toString())
            }
            is Map<*, *> -> {
                out.append('{')
                var first = true
                for ((k, v) in value) {
                    if (!first) out.append(',')
                    first = false
                    writeString(out, k.toString())
                    out.append(':')
                    writeTo(out, v)
                }
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                var first = true
                for (v in value) {
                    if (!first) out.append(',')
                    first = false
                    writeTo(out, v)
                }
                out.append(']')
            }
            is IntArray -> writeTo(out, value.toList())
            is LongArray -> writeTo(out, value.toList())
            is FloatArray -> writeTo(out, value.toList())
            else -> writeString(out, value.toString())
        }
    }

    private fun writeString(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c < ' ' -> out.append("\\u").append(c.code.toString(16).padStart(4, '0'))
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    private class Reader(val s: String) {
        var pos = 0

        fun fail(message: String): Nothing = throw IllegalArgumentException("JSON: $message at offset $pos")

        fun skipWhitespace() {
            while (pos < s.length && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t')) pos++
        }

        fun readValue(): Any? {
            if (pos >= s.length) fail("unexpected end")
            return when (s[pos]) {
                '{' -> readObject()
                '[' -> readArray()
                '"' -> readString()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> readNumber()
            }
        }

        private fun literal(word: String, value: Any?): Any? {
            if (!s.startsWith(word, pos)) fail("unexpected character '${s[pos]}'")
            pos += word.length
            return value
        }

        private fun readObject(): Map<String, Any?> {
            val map = LinkedHashMap<String, Any?>()
            pos++ // {
            skipWhitespace()
            if (pos < s.length && s[pos] == '}') { pos++; return map }
            while (true) {
                skipWhitespace()
                if (pos >= s.length || s[pos] != '"') fail("expected a string key")
                val key = readString()
                skipWhitespace()
                if (pos >= s.length || s[pos] != ':') fail("expected ':'")
                pos++
                skipWhitespace()
                map[key] = readValue()
                skipWhitespace()
                if (pos >= s.length) fail("unterminated object")
                when (s[pos++]) {
                    ',' -> continue
                    '}' -> return map
                    else -> { pos--; fail("expected ',' or '}'") }
                }
            }
        }

        private fun readArray(): List<Any?> {
            val list = ArrayList<Any?>()
            pos++ // [
            skipWhitespace()
            if (pos < s.length && s[pos] == ']') { pos++; return list }
            while (true) {
                skipWhitespace()
                list.add(readValue())
                skipWhitespace()
                if (pos >= s.length) fail("unterminated array")
                when (s[pos++]) {
                    ',' -> continue
                    ']' -> return list
                    else -> { pos--; fail("expected ',' or ']'") }
                }
            }
        }

        private fun readString(): String {
            pos++ // opening quote
            val sb = StringBuilder()
            while (true) {
                if (pos >= s.length) fail("unterminated string")
                val c = s[pos++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (pos >= s.length) fail("unterminated escape")
                        when (val e = s[pos++]) {
                            '"' -> sb.append('"')
                            '\\' -> sb.append('\\')
                            '/' -> sb.append('/')
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 4 > s.length) fail("short \\u escape")
                                val hex = s.substring(pos, pos + 4)
                                val code = hex.toIntOrNull(16) ?: fail("bad \\u escape '$hex'")
                                sb.append(code.toChar()) // surrogate pairs arrive as two escapes
                                pos += 4
                            }
                            else -> fail("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> fail("control character in string")
                    else -> sb.append(c)
                }
            }
        }

        /** RFC 8259: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?  ("01", "1.", ".5", "+1" are errors). */
        private fun readNumber(): Any {
            val start = pos
            if (pos < s.length && s[pos] == '-') pos++
            when {
                pos < s.length && s[pos] == '0' -> pos++
                pos < s.length && s[pos] in '1'..'9' -> digits()
                else -> fail(if (pos < s.length) "unexpected character '${s[pos]}'" else "unexpected end")
            }
            var integral = true
            if (pos < s.length && s[pos] == '.') {
                pos++
                if (digits() == 0) fail("a digit must follow the decimal point")
                integral = false
            }
            if (pos < s.length && (s[pos] == 'e' || s[pos] == 'E')) {
                pos++
                if (pos < s.length && (s[pos] == '+' || s[pos] == '-')) pos++
                if (digits() == 0) fail("a digit must follow the exponent")
                integral = false
            }
            val token = s.substring(start, pos)
            if (integral) token.toLongOrNull()?.let { return it } // larger integers: a Double, like other readers
            return token.toDouble()
        }

        private fun digits(): Int {
            val start = pos
            while (pos < s.length && s[pos] in '0'..'9') pos++
            return pos - start
        }
    }
}

/** Typed accessors over parsed JSON, failing with the key path in the message. */
@Suppress("UNCHECKED_CAST")
internal fun Any?.obj(what: String): Map<String, Any?> =
    this as? Map<String, Any?> ?: throw IllegalArgumentException("$what: expected a JSON object")

@Suppress("UNCHECKED_CAST")
internal fun Any?.arr(what: String): List<Any?> =
    this as? List<Any?> ?: throw IllegalArgumentException("$what: expected a JSON array")

internal fun Any?.str(what: String): String =
    this as? String ?: throw IllegalArgumentException("$what: expected a string")

internal fun Any?.num(what: String): Number =
    this as? Number ?: throw IllegalArgumentException("$what: expected a number")

internal fun Any?.bool(what: String): Boolean =
    this as? Boolean ?: throw IllegalArgumentException("$what: expected true or false")
