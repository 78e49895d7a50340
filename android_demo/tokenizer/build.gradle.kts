// Pure Kotlin/JVM: no Android APIs, so the tokenizer compiles and is tested on any JVM
// (CI: tests/test_kotlin_tokenizer.py compiles src/main/kotlin with a bare kotlinc).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}
