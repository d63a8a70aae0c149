//! SmolLM2's chat template, ChatML, implemented directly instead of evaluating the Jinja
//! text in `tokenizer.chat_template` (which is checked to be ChatML at load):
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n
//! ```
//!
//! As in the template, a default system prompt is added when the first message is not a
//! system message.

use super::gguf_tokenizer::GgufTokenizer;
use super::{ChatMessage, Role};
use crate::ModelError;

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

/// SmolLM2-Instruct's template default, used when the GGUF carries no template.
const SMOLLM2_DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

#[derive(Debug, Clone)]
pub struct ChatMl {
    im_start: u32,
    im_end: u32,
    default_system: Option<String>,
}

impl ChatMl {
    /// Checks the tokenizer's template is ChatML and takes its default system prompt.
    pub fn from_tokenizer(tok: &GgufTokenizer) -> Result<Self, ModelError> {
        let id =
            |t: &str| tok.token_id(t).ok_or_else(|| ModelError::Unsupported(format!("vocabulary has no {t} token")));
        let (im_start, im_end) = (id(IM_START)?, id(IM_END)?);
        let default_system = match tok.chat_template() {
            None => {
                tracing::warn!("GGUF has no tokenizer.chat_template; assuming SmolLM2 ChatML");
                Some(SMOLLM2_DEFAULT_SYSTEM.to_string())
            }
            Some(t) if t.contains(IM_START) && t.contains(IM_END) => default_system_of(t),
            Some(_) => {
                return Err(ModelError::Unsupported(
                    "tokenizer.chat_template is not ChatML (<|im_start|>/<|im_end|>)".into(),
                ))
            }
        };
        Ok(Self { im_start, im_end, default_system })
    }

    /// The prompt as text, ending with the assistant turn's header.
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        let mut out = String::new();
        for (role, content) in self.turns(messages) {
            out.push_str(&format!("{IM_START}{role}\n{content}{IM_END}\n"));
        }
        out.push_str(&format!("{IM_START}assistant\n"));
        out
    }

    /// The prompt's token ids. Message contents are tokenized with special-token text treated
    /// as plain text, so content cannot open or close turns; the markers are inserted as ids.
    pub fn encode(&self, tok: &GgufTokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>, ModelError> {
        let newline = tok.encode("\n", false)?;
        let mut ids = Vec::new();
        for (role, content) in self.turns(messages) {
            ids.push(self.im_start);
            ids.extend(tok.encode(&format!("{role}\n{content}"), false)?);
            ids.push(self.im_end);
            ids.extend_from_slice(&newline);
        }
        ids.push(self.im_start);
        ids.extend(tok.encode("assistant\n", false)?);
        Ok(ids)
    }

    fn turns<'a>(&'a self, messages: &'a [ChatMessage]) -> impl Iterator<Item = (&'a str, &'a str)> {
        let default = match (messages.first(), &self.default_system) {
            (Some(first), Some(system)) if first.role != Role::System => Some(("system", system.as_str())),
            _ => None,
        };
        default.into_iter().chain(messages.iter().map(|m| (role_name(m.role), m.content.as_str())))
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The literal system prompt in a template's `'<|im_start|>system\n...<|im_end|>'` string.
fn default_system_of(template: &str) -> Option<String> {
    let marker = format!("{IM_START}system");
    let start = template.find(&marker)? + marker.len();
    let rest = &template[start..];
    // The template text may hold a real newline or the two characters `\n`.
    let rest = rest.strip_prefix('\n').or_else(|| rest.strip_prefix("\\n"))?;
    let end = rest.find(IM_END)?;
    let system = &rest[..end];
    // A system turn built from a variable (`' + message['content'] + '`) is no default.
    (!system.is_empty() && !system.contains('\'') && !system.contains('{')).then(|| system.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_system_from_smollm2_template() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        assert_eq!(default_system_of(t).as_deref(), Some(SMOLLM2_DEFAULT_SYSTEM));
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert_eq!(default_system_of(plain), None);
    }
}
