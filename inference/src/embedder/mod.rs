mod attention;
pub mod bert;
pub mod deepseek;
pub mod encoder;
pub mod int8;
mod simd;

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
}
