// The numbers and character sets of the app's core that are not manifest keys. The Android core's Rules.kt
// declares the same groups with the same values (tests/test_app_core_swift.py compares them).
//
// There is no tolerance here on purpose: the self-check allows each file the tolerance golden.json gives it
// (GoldenKeys.tolerance, what the pipeline allowed that file against the float model), and fails a file that
// golden.json gives no tolerance.

enum CoreRules {
    /// The manifest schema_version this app reads.
    static let schemaVersion = 1
    /// The dimension of a manifest input shape that takes any length 1...model.max_length (the text's tokens).
    static let dynamicDim = -1
    /// Filler of attention_mask and token_type_ids when a shorter encoding is padded for a static file; input_ids
    /// get tokenizer.pad_id (pipeline/shapes.py `pad`).
    static let padAttentionMask = 0
    static let padTokenTypeId = 0
    /// How much of a golden text the self-check shows when its ids differ.
    static let detailTextChars = 40
}

/// MediaPipeText.normalize: the characters its WordPiece branch treats specially (pipeline/tokenizer_drift.py).
enum MediaPipeRules {
    /// Become an ASCII space, like every Unicode space separator (Zs): MediaPipe splits on ASCII spaces only.
    static let wordpieceSpaces = "\t\n\r"
    /// Dropped, like every combining mark (Mn), control (Cc) and format (Cf) character.
    static let wordpieceDropped = "\u{FFFD}"
}
