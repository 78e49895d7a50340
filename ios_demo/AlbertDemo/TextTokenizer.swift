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
        var config: [NSString: Any] = ["tokenizer_class": bundle.tokenizerKind == "wordpiece" ? "BertTokenizer" : "T5Tokenizer"]
        let configURL = url.deletingLastPathComponent().appendingPathComponent("tokenizer_config.json")
        if let bundled = try? ModelBundle.readJSON(configURL) as? [NSString: Any] {
            config = bundled
        }
        tokenizer = try AutoTokenizer.from(tokenizerConfig: Config(config), tokenizerData: Config(tokenizerData))
        padId = TextTokenizer.padId(tokenizerData)
    }

    private static func padId(_ json: [NSString: Any]) -> Int {
        if let padding = json["padding"] as? [String: Any], let id = padding["pad_id"] as? NSNumber { return id.intValue }
        for token in (json["added_tokens"] as? [[String: Any]]) ?? [] {
            if let content = token["content"] as? String, content == "[PAD]" || content == "<pad>",
               let id = token["id"] as? NSNumber { return id.intValue }
        }
        return 0
    }

    /// `pad`: right-padded to maxLength (static files); else exactly the tokens (dynamic files, shape [1, length]).
    func encode(_ text: String, maxLength: Int, pad: Bool = true) -> Encoding {
        var ids = tokenizer.encode(text: text)  // with the template's special tokens
        if ids.count > maxLength, let last = ids.last {
            ids = Array(ids.prefix(maxLength - 1)) + [last]
        }
        let length = ids.count
        let padding = pad ? max(0, maxLength - length) : 0
        return Encoding(
            inputIds: ids + Array(repeating: padId, count: padding),
            attentionMask: Array(repeating: 1, count: length) + Array(repeating: 0, count: padding),
            tokenTypeIds: Array(repeating: 0, count: length + padding)
        )
    }
}
