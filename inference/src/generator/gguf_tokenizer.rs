//! A `tokenizers` tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.*`), for GGUF files
//! that ship no `tokenizer.json`. Only the GPT-2 style byte-level BPE (`tokenizer.ggml.model =
//! "gpt2"`) is supported, with the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::ModelError;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A byte-level BPE tokenizer with its special tokens, as described by a GGUF file.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// Recognises special-token text (`<|im_start|>`) as the single special id.
    special: Tokenizer,
    /// The same vocabulary, but special-token text is ordinary text: for message contents, so
    /// a retrieved document containing `<|im_end|>` cannot forge a turn boundary.
    plain: Tokenizer,
    /// Raw bytes of each id, for streaming decode; empty for control tokens.
    token_bytes: Vec<Vec<u8>>,
    control: HashSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.token_bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl GgufTokenizer {
    /// Reads only the metadata of the GGUF file at `path` (not the tensors).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile { path: path.to_path_buf() }
            } else {
                ModelError::Io { path: path.to_path_buf(), source }
            }
        })?;
        let config_err = |message: String| ModelError::Config { path: path.to_path_buf(), message };
        // candle's parser panics on some malformed headers (an alignment of 0).
        let content = catch_unwind(AssertUnwindSafe(|| Content::read(&mut BufReader::new(file))))
            .map_err(|_| config_err("GGUF header is malformed (parser panicked)".into()))?
            .map_err(|e| config_err(format!("not a readable GGUF file: {e}")))?;
        Self::from_gguf(&content)
    }

    /// Builds the tokenizer from already parsed GGUF metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, ModelError> {
        let md = &content.metadata;
        let model = md_string(md, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer model {model:?} (only gpt2-style byte-level BPE is supported)"
            )));
        }
        let tokens: Vec<String> = md_array(md, "tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("tokenizer.ggml.tokens", e))?;
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(bad("tokenizer.ggml.tokens", format!("{} tokens", tokens.len())));
        }
        let merges: Vec<(String, String)> = md_array(md, "tokenizer.ggml.merges")?
            .iter()
            .map(|v| {
                let s = v.to_string().map_err(|e| bad("tokenizer.ggml.merges", e))?;
                // Byte-level tokens never contain a space (it is mapped to 'Ġ'), so the single
                // space is an unambiguous separator.
                s.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad("tokenizer.ggml.merges", format!("merge {s:?}")))
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .and_then(|vs| vs.iter().map(Value::to_i32).collect())
                .map_err(|e| bad("tokenizer.ggml.token_type", e))?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(bad("tokenizer.ggml.token_type", format!("{} types for {} tokens", types.len(), tokens.len())));
        }

        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        if vocab.len() != tokens.len() {
            return Err(bad("tokenizer.ggml.tokens", "duplicate tokens"));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("building BPE from GGUF: {e}")))?;

        let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned();
        let mut special = Tokenizer::new(bpe);
        special.with_pre_tokenizer(Some(pre_tokenizer(pre.as_deref())));
        // Decoding maps the byte-level alphabet back to bytes; no prefix space to strip since
        // encoding adds none (`tokenizer.ggml.add_space_prefix` is false for these models).
        special.with_decoder(Some(ByteLevel::new(false, true, true)));

        let mut control = HashSet::new();
        let mut added = Vec::new();
        for (id, (token, &ty)) in tokens.iter().zip(&types).enumerate() {
            match ty {
                TOKEN_TYPE_CONTROL => {
                    control.insert(id as u32);
                    added.push(AddedToken::from(token.clone(), true));
                }
                TOKEN_TYPE_USER_DEFINED => added.push(AddedToken::from(token.clone(), false)),
                _ => {}
            }
        }
        // The tokens are already in the vocabulary, so these keep their GGUF ids.
        special.add_tokens(&added);
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);

        let byte_of = gpt2_unicode_to_byte();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .map(|(t, &ty)| match ty {
                TOKEN_TYPE_CONTROL => Vec::new(),
                // Added tokens decode to their literal text, not through the byte alphabet.
                TOKEN_TYPE_USER_DEFINED => t.as_bytes().to_vec(),
                _ => t
                    .chars()
                    .flat_map(|c| match byte_of(c) {
                        Some(b) => vec![b],
                        None => c.to_string().into_bytes(),
                    })
                    .collect(),
            })
            .collect();

        let id_of = |key: &str| -> Option<u32> {
            md.get(key).and_then(|v| v.to_u32().ok()).filter(|&id| (id as usize) < tokens.len())
        };
        let chat_template = md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
        Ok(Self {
            special,
            plain,
            token_bytes,
            control,
            bos: id_of("tokenizer.ggml.bos_token_id"),
            eos: id_of("tokenizer.ggml.eos_token_id"),
            chat_template,
        })
    }

    /// Token ids of `text`. With `parse_special`, special-token text such as `<|im_start|>`
    /// becomes its single id; without, it is tokenized as the characters it is made of.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, ModelError> {
        let tok = if parse_special { &self.special } else { &self.plain };
        tok.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Text of `ids`; `skip_special` drops control tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.special.decode(ids, skip_special).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The id of a token given by its vocabulary text (e.g. `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.special.token_to_id(token)
    }

    /// The raw bytes `id` stands for (possibly part of a UTF-8 character); empty for control
    /// tokens and unknown ids.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.contains(&id)
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// The Jinja chat template from `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: Option<&str>) -> PreTokenizerWrapper {
    // ByteLevel(use_regex) applies the GPT-2 split regex, which is llama.cpp's second regex
    // for these pre-types; smollm/starcoder first split every digit on its own.
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        Some("smollm" | "starcoder" | "refact" | "codeshell") => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]))
        }
        Some("gpt-2" | "default") | None => byte_level.into(),
        Some(other) => {
            tracing::warn!(pre = other, "unknown GGUF pre-tokenizer; using plain GPT-2 byte-level");
            byte_level.into()
        }
    }
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the
/// others were shifted to U+0100 onwards in byte order.
fn gpt2_unicode_to_byte() -> impl Fn(char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = [0u8; 512];
    let mut valid = [false; 512];
    let mut shifted = 0usize;
    for b in 0..=255u8 {
        let c = if printable(b) {
            b as usize
        } else {
            shifted += 1;
            255 + shifted
        };
        table[c] = b;
        valid[c] = true;
    }
    move |c: char| {
        let i = c as usize;
        (i < 512 && valid[i]).then(|| table[i])
    }
}

fn md_string<'a>(md: &'a std::collections::HashMap<String, Value>, key: &str) -> Result<&'a String, ModelError> {
    md.get(key).ok_or_else(|| bad(key, "missing"))?.to_string().map_err(|e| bad(key, e))
}

fn md_array<'a>(md: &'a std::collections::HashMap<String, Value>, key: &str) -> Result<&'a Vec<Value>, ModelError> {
    md.get(key).ok_or_else(|| bad(key, "missing"))?.to_vec().map_err(|e| bad(key, e))
}

fn bad(key: &str, what: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(format!("GGUF metadata {key}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let byte_of = gpt2_unicode_to_byte();
        let mut seen = HashSet::new();
        for i in 0..512u32 {
            if let Some(b) = char::from_u32(i).and_then(&byte_of) {
                assert!(seen.insert(b), "byte {b} mapped twice");
            }
        }
        assert_eq!(seen.len(), 256);
        assert_eq!(byte_of('Ġ'), Some(b' '));
        assert_eq!(byte_of('Ċ'), Some(b'\n'));
        assert_eq!(byte_of('a'), Some(b'a'));
    }
}
