import Foundation
import Tokenizers

/// The bundled tokenizer.json through swift-transformers' Tokenizers, with the pipeline's fixed-length contract:
/// [CLS] ids [SEP] truncated to max_length (keeping the final [SEP]) and right-padded with the pad id.
final class TextTokenizer {
    private let tokenizer: Tokenizer
    private let padId: Int

    init(bundle: ModelBundle) throws {
        let url = bundle.url(bundle.tokenizerFile)
        guard let tokenizerData = try ModelBundle.readJSON(url) as? [NSString: Any] else {
            throw BundleError.invalid("\(bundle.tokenizerFile) is not a JSON object")
        }
        // tokenizer_config.json is optional in the bundle: the class only selects the model type, everything else
        // (normalizer, pre-tokenizer, vocabulary, template) is read from tokenizer.json.
        var config: [NSString: Any] = ["tokenizer_class": bundle.tokenizerKind == ManifestValues.tokenizerWordpiece ? "BertTokenizer" : "T5Tokenizer"]
        let configURL = url.deletingLastPathComponent().appendingPathComponent("tokenizer_config.json")
        if let bundled = try? ModelBundle.readJSON(configURL) as? [NSString: Any] {
            config = bundled
        }
        tokenizer = try AutoTokenizer.from(tokenizerConfig: Config(config), tokenizerData: Config(tokenizerData))
        padId = bundle.padId  // the Python tokenizer's pad id (manifest tokenizer.pad_id)
    }

    /// `pad`: right-padded to maxLength (static files); else exactly the tokens (dynamic files, shape [1, length]).
    /// The tokenizer call is swift-transformers'; the contract (truncate keeping [SEP], pad) is the core's.
    func encode(_ text: String, maxLength: Int, pad: Bool = true) -> Encoding {
        Encoding.fixedLength(tokenizer.encode(text: text), maxLength: maxLength, pad: pad, padId: padId)
    }
}
