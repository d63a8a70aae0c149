//! The token loop every generator shares: sample, stop at an end token, stream the text
//! (stop strings, cancellation), stop at `max_tokens`, step the model.

use candle_core::Tensor;

use super::sampling::Sampler;
use super::text_stream::{StreamState, TextStream};
use super::{FinishReason, Flow};
use crate::ModelError;

/// Decodes from the prompt's last-position `logits` (1-D). The model-specific parts come in
/// as closures: `is_end(token)`, `new_text(generated)` (the bytes the last token adds to the
/// answer, empty for none yet), `step(token, generated_len)` (the next 1-D logits).
/// Returns the number of tokens generated and why it stopped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_loop(
    mut logits: Tensor,
    sampler: &mut Sampler,
    max_tokens: usize,
    stops: &[String],
    emit: &mut dyn FnMut(&str) -> Flow,
    is_end: impl Fn(u32) -> bool,
    mut new_text: impl FnMut(&[u32]) -> Result<Vec<u8>, ModelError>,
    mut step: impl FnMut(u32, usize) -> Result<Tensor, ModelError>,
) -> Result<(usize, FinishReason), ModelError> {
    let mut stream = TextStream::new(stops);
    let mut generated: Vec<u32> = Vec::new();
    let finish = loop {
        let next = sampler.sample(&logits, &generated)?;
        generated.push(next);
        if is_end(next) {
            break FinishReason::Stop;
        }
        let bytes = new_text(&generated)?;
        if !bytes.is_empty() {
            match stream.push(&bytes, emit) {
                StreamState::Continue => {}
                StreamState::StopString => break FinishReason::Stop,
                StreamState::Cancelled => break FinishReason::Cancelled,
            }
        }
        if generated.len() >= max_tokens {
            break FinishReason::Length;
        }
        logits = step(next, generated.len())?;
    };
    if finish != FinishReason::Cancelled {
        // The answer is over either way; what the callback says no longer matters.
        let _ = stream.finish(emit);
    }
    Ok((generated.len(), finish))
}
