package org.pipeline.demo.core

/**
 * The numbers and character sets of the app's core that are not manifest keys. ios_demo/AlbertDemo/Core/Rules.swift
 * declares the same groups with the same values (tests/test_app_core_swift.py compares them).
 *
 * There is no tolerance here on purpose: the self-check allows each file the tolerance golden.json gives it
 * (GoldenKeys.TOLERANCE, what the pipeline allowed that file against the float model), and fails a file that
 * golden.json gives no tolerance.
 */
object CoreRules {
    /** The manifest schema_version this app reads. */
    const val SCHEMA_VERSION = 1
    /** The dimension of a manifest input shape that takes any length 1..model.max_length (the text's tokens). */
    const val DYNAMIC_DIM = -1L
    /** Filler of attention_mask and token_type_ids when a shorter encoding is padded for a static file; input_ids
     *  get tokenizer.pad_id (pipeline/shapes.py `pad`). */
    const val PAD_ATTENTION_MASK = 0
    const val PAD_TOKEN_TYPE_ID = 0
    /** How much of a golden text the self-check shows when its ids differ. */
    const val DETAIL_TEXT_CHARS = 40
}

/** MediaPipeText.normalize: the characters its WordPiece branch treats specially (pipeline/tokenizer_drift.py). */
object MediaPipeRules {
    /** Become an ASCII space, like every Unicode space separator (Zs): MediaPipe splits on ASCII spaces only. */
    const val WORDPIECE_SPACES = "\t\n\r"
    /** Dropped, like every combining mark (Mn), control (Cc) and format (Cf) character. */
    const val WORDPIECE_DROPPED = "\uFFFD"
}
