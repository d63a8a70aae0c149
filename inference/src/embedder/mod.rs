mod attention;
pub mod bert;
pub mod deepseek;
pub mod device;
pub mod encoder;
pub mod int8;
pub mod sentence;
mod simd;

pub use simd::dot;
mod xlmr;

use crate::ModelError;

/// Each row of `v` (n, dim) scaled to unit length, as plain vectors (every embedder's output).
pub(crate) fn unit_rows(v: &candle_core::Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
    let norms = v.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    Ok(v.broadcast_div(&norms)?.to_vec2::<f32>()?)
}

/// Turns texts into L2-normalised vectors. Implementations: [`bert::BertEmbedder`] (the
/// default sentence encoder) and the DeepSeek embedding head.
pub trait Embedder: Send + Sync {
    /// A stable name recorded with every collection built by this embedder, so that a
    /// collection is never queried with vectors from another model.
    fn id(&self) -> &str;
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// The most tokens one input may have; longer inputs are truncated.
    fn max_tokens(&self) -> usize;
    /// The embedder's own tokenizer, which the chunker counts with.
    fn tokenizer(&self) -> &tokenizers::Tokenizer;
    /// Embeds passages (documents being indexed).
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Embeds a search query. Same as passages unless the model is asymmetric.
    fn embed_query(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        Ok(self.embed_passages(&[text])?.remove(0))
    }
    /// Embeds several search queries at once (concurrent searches, batched together).
    fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        texts.iter().map(|t| self.embed_query(t)).collect()
    }
    /// How well the model reads `text`, from 0 to 1: the share of its letters and digits that
    /// its tokenizer puts in known word pieces of more than one letter or digit. An English
    /// WordPiece vocabulary reads Chinese one character at a time, or as unknown, and scores
    /// near 0 there; hybrid search then leans on keywords. Text with no letters scores 1.
    fn coverage(&self, text: &str) -> f32 {
        coverage(self.tokenizer(), text)
    }
}

/// [`Embedder::coverage`] through `tokenizer`.
pub fn coverage(tokenizer: &tokenizers::Tokenizer, text: &str) -> f32 {
    let letters = |s: &str| s.chars().filter(|c| c.is_alphanumeric()).count();
    let total = letters(text);
    if total == 0 {
        return 1.0;
    }
    let Ok(encoding) = tokenizer.encode(text, false) else {
        return 0.0;
    };
    // The unknown token's usual spellings: WordPiece's and SentencePiece's.
    let unknown: Vec<u32> = ["[UNK]", "<unk>"].iter().filter_map(|t| tokenizer.token_to_id(t)).collect();
    let mut read = 0;
    let mut last_end = 0;
    for (id, &(start, end)) in encoding.get_ids().iter().zip(encoding.get_offsets()) {
        // Byte-level pieces of one character share its offsets: count each span once.
        if unknown.contains(id) || start < last_end {
            continue;
        }
        let n = text.get(start..end).map_or(0, letters);
        if n > 1 {
            read += n;
            last_end = end;
        }
    }
    (read as f32 / total as f32).min(1.0)
}
