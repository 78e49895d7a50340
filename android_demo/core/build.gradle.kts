// Pure Kotlin/JVM: everything the app computes that is not an Android or runtime call (manifest and golden.json,
// the shape contract, inputs and outputs, the self-check, MediaPipe text normalization, labels). No Android APIs,
// so it compiles and is tested on any JVM (CI: tests/test_app_core.py compiles src/main/kotlin with the tokenizer
// module and src/test/kotlin's AppCoreCli with a bare kotlinc, and checks it against real builds).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    api(project(":tokenizer"))
}
