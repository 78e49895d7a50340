// AGP 9 compiles Kotlin sources itself (built-in Kotlin): no org.jetbrains.kotlin.android plugin.
plugins {
    alias(libs.plugins.android.application)
}

android {
    namespace = "org.pipeline.demo"
    compileSdk = 36

    defaultConfig {
        applicationId = "org.pipeline.demo"
        minSdk = 26
        targetSdk = 36
        versionCode = 1
        versionName = "1.0"
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    // Model files are memory-mapped / copied byte for byte: keep them uncompressed in the APK.
    androidResources {
        noCompress += listOf("pte", "tflite", "model")
    }
}

dependencies {
    implementation(project(":core")) // with :tokenizer (an api dependency of :core)
    implementation(libs.executorch.android)
    implementation(libs.litert)
    implementation(libs.mediapipe.tasks.text) // MediaPipe mode: TextClassifier on the .mediapipe.tflite files
}
