//! DeepSeek-V2's tokenizer and chat format, loaded from the model directory.
//!
//! `tokenizer.json` is read with the `tokenizers` crate; `tokenizer_config.json` gives the BOS /
//! EOS token strings and the Jinja `chat_template`. kb does not run Jinja: it recognises
//! DeepSeek-V2(-Lite)-Chat's template and renders it the way that template does:
//!
//! ```text
//! <｜begin▁of▁sentence｜>{system}\n\nUser: {user}\n\nAssistant: {answer}<｜end▁of▁sentence｜>User: {user}\n\nAssistant:
//! ```
//!
//! exactly: BOS once; a system message as its content + "\n\n"; a user message as
//! "User: " + content + "\n\n"; an assistant message as "Assistant: " + content + EOS; and, to
//! ask for an answer, "Assistant:" (no trailing space; the model writes it). Any other template
//! is refused with an error rather than rendered wrongly.

use crate::generator::{ChatMessage, Role};
use crate::ModelError;
use std::path::Path;

/// The marker of DeepSeek-V2-Chat's template (llama.cpp detects it by the same text).
const V2_MARKER: &str = "'Assistant: ' + message['content'] + eos_token";

/// The chat formats kb can render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// DeepSeek-V2 / V2-Lite Chat: `User: ...\n\nAssistant: ...<eos>`.
    DeepSeekV2,
}

impl ChatFormat {
    /// Recognises a `chat_template` string.
    pub fn detect(template: &str) -> Option<Self> {
        template.contains(V2_MARKER).then_some(Self::DeepSeekV2)
    }
}

#[derive(Debug, Clone)]
pub struct DeepSeekTokenizer {
    tokenizer: tokenizers::Tokenizer,
    format: ChatFormat,
    bos: String,
    eos: String,
    eos_id: u32,
}

/// A token string in tokenizer_config.json: a plain string or an AddedToken object.
fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl DeepSeekTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(ModelError::MissingFile { path: tok_path });
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        if !cfg_path.is_file() {
            return Err(ModelError::MissingFile { path: cfg_path });
        }
        let text =
            std::fs::read_to_string(&cfg_path).map_err(|source| ModelError::Io { path: cfg_path.clone(), source })?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { path: cfg_path.clone(), message: e.to_string() })?;
        let bad = |message: String| ModelError::Config { path: cfg_path.clone(), message };
        let template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // The list form: [{"name": "default", "template": "..."}, ...].
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template")?.as_str().map(str::to_string))
                .ok_or_else(|| bad("chat_template list has no template".into()))?,
            _ => return Err(bad("no chat_template (a chat model's tokenizer_config.json has one)".into())),
        };
        let format = ChatFormat::detect(&template).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "chat template in {} is not DeepSeek-V2-Chat's (User:/Assistant:) format",
                cfg_path.display()
            ))
        })?;
        let bos = cfg.get("bos_token").and_then(token_string).ok_or_else(|| bad("no bos_token".into()))?;
        let eos = cfg.get("eos_token").and_then(token_string).ok_or_else(|| bad("no eos_token".into()))?;
        let eos_id = tokenizer
            .token_to_id(&eos)
            .ok_or_else(|| ModelError::Tokenizer(format!("eos token {eos:?} is not in {}", tok_path.display())))?;
        if tokenizer.token_to_id(&bos).is_none() {
            return Err(ModelError::Tokenizer(format!("bos token {bos:?} is not in {}", tok_path.display())));
        }
        Ok(Self { tokenizer, format, bos, eos, eos_id })
    }

    pub fn format(&self) -> ChatFormat {
        self.format
    }

    pub fn eos_token_id(&self) -> u32 {
        self.eos_id
    }

    pub fn eos_token(&self) -> &str {
        &self.eos
    }

    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    /// The prompt text for `messages`, as the model's chat template renders it.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        match self.format {
            ChatFormat::DeepSeekV2 => {
                let mut s = self.bos.clone();
                for m in messages {
                    match m.role {
                        Role::System => {
                            s.push_str(&m.content);
                            s.push_str("\n\n");
                        }
                        Role::User => {
                            s.push_str("User: ");
                            s.push_str(&m.content);
                            s.push_str("\n\n");
                        }
                        Role::Assistant => {
                            s.push_str("Assistant: ");
                            s.push_str(&m.content);
                            s.push_str(&self.eos);
                        }
                    }
                }
                if add_generation_prompt {
                    s.push_str("Assistant:");
                }
                s
            }
        }
    }

    /// Token ids of `text`; special tokens written in the text (the rendered BOS/EOS) map to
    /// their ids, and nothing is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The prompt ids for `messages`, ending with the request for the assistant's answer.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ModelError> {
        if messages.is_empty() {
            return Err(ModelError::InvalidInput("no messages".into()));
        }
        self.encode(&self.render_chat(messages, true))
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}
