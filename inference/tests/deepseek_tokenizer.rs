//! DeepSeek-V2 tokenizer and chat template loading, on a tiny tokenizer the test writes.

use kb_inference::deepseek::{ChatFormat, DeepSeekTokenizer};
use kb_inference::{ChatMessage, ModelError, Role};
use std::path::Path;

const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";
/// DeepSeek-V2(-Lite)-Chat's chat_template, as in its tokenizer_config.json.
const V2_TEMPLATE: &str = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

fn write_tokenizer(dir: &Path) {
    let words = ["User", ":", "Assistant", "hello", "hi", "Be", "brief", ".", "[UNK]"];
    let mut vocab = serde_json::Map::new();
    vocab.insert(BOS.into(), 0.into());
    vocab.insert(EOS.into(), 1.into());
    for (i, w) in words.iter().enumerate() {
        vocab.insert((*w).into(), (i + 2).into());
    }
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, BOS), added(1, EOS)],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

fn write_config(dir: &Path, template: Option<&str>) {
    let mut cfg = serde_json::json!({
        "add_bos_token": true, "add_eos_token": false,
        "bos_token": {"__type": "AddedToken", "content": BOS, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
        "eos_token": {"__type": "AddedToken", "content": EOS, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
        "model_max_length": 16384, "tokenizer_class": "LlamaTokenizerFast"
    });
    if let Some(t) = template {
        cfg["chat_template"] = t.into();
    }
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

fn msg(role: Role, content: &str) -> ChatMessage {
    ChatMessage { role, content: content.into() }
}

#[test]
fn renders_deepseek_v2_chat_template_and_encodes_it() {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path());
    write_config(dir.path(), Some(V2_TEMPLATE));
    let tok = DeepSeekTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.format(), ChatFormat::DeepSeekV2);
    assert_eq!((tok.bos_token(), tok.eos_token(), tok.eos_token_id()), (BOS, EOS, 1));

    let messages = [
        msg(Role::System, "Be brief."),
        msg(Role::User, "hello"),
        msg(Role::Assistant, "hi"),
        msg(Role::User, "hello"),
    ];
    let text = tok.render_chat(&messages, true);
    assert_eq!(text, format!("{BOS}Be brief.\n\nUser: hello\n\nAssistant: hi{EOS}User: hello\n\nAssistant:"));
    assert_eq!(tok.render_chat(&messages[1..2], false), format!("{BOS}User: hello\n\n"));

    let ids = tok.encode_chat(&messages).unwrap();
    // bos Be brief . User : hello Assistant : hi eos User : hello Assistant :
    assert_eq!(ids, vec![0, 7, 8, 9, 2, 3, 5, 4, 3, 6, 1, 2, 3, 5, 4, 3]);
    let back = tok.decode(&ids).unwrap();
    assert!(back.contains("hello") && !back.contains(EOS), "{back}");
    assert!(matches!(tok.encode_chat(&[]), Err(ModelError::InvalidInput(_))));
}

#[test]
fn missing_files_and_unknown_templates_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    match DeepSeekTokenizer::from_dir(dir.path()) {
        Err(ModelError::MissingFile { path }) => assert!(path.ends_with("tokenizer.json")),
        other => panic!("expected a missing tokenizer.json, got {other:?}"),
    }
    write_tokenizer(dir.path());
    match DeepSeekTokenizer::from_dir(dir.path()) {
        Err(ModelError::MissingFile { path }) => assert!(path.ends_with("tokenizer_config.json")),
        other => panic!("expected a missing tokenizer_config.json, got {other:?}"),
    }
    write_config(dir.path(), None);
    let err = DeepSeekTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::Config { .. }) && err.to_string().contains("chat_template"), "{err}");
    write_config(dir.path(), Some("{% for m in messages %}<|im_start|>{{ m['role'] }}{% endfor %}"));
    let err = DeepSeekTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::Unsupported(_)), "{err}");
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    assert!(matches!(DeepSeekTokenizer::from_dir(dir.path()), Err(ModelError::Tokenizer(_))));
}
