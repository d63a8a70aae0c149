//! Turns a stream of token bytes into text pieces for the caller: whole UTF-8 characters
//! only, and nothing of a stop string (text that may be the start of one is held back until
//! it is known not to be).

use super::Flow;

/// What the stream decided after a token's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Keep generating.
    Continue,
    /// A stop string was found; the text before it has been handed out.
    StopString,
    /// The caller's callback returned [`Flow::Stop`].
    Cancelled,
}

/// Incremental decoder with stop-string detection.
#[derive(Debug)]
pub struct TextStream {
    /// Bytes of a UTF-8 character not yet complete.
    partial: Vec<u8>,
    /// Decoded text not yet handed out because it could begin a stop string.
    held: String,
    stops: Vec<String>,
}

impl TextStream {
    /// `stops` are the strings that end generation; empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        Self {
            partial: Vec::new(),
            held: String::new(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Feeds the bytes of one token, handing out whatever text is now certain.
    pub fn push(&mut self, bytes: &[u8], on_text: &mut dyn FnMut(&str) -> Flow) -> StreamState {
        self.partial.extend_from_slice(bytes);
        let text = take_utf8(&mut self.partial);
        if text.is_empty() {
            return StreamState::Continue;
        }
        self.held.push_str(&text);

        if let Some(at) = self.earliest_stop() {
            let before = &self.held[..at];
            if !before.is_empty() {
                // Finishing either way; the callback's answer changes nothing.
                let _ = on_text(before);
            }
            self.held.clear();
            return StreamState::StopString;
        }
        let keep = self.stop_prefix_len();
        let emit_len = self.held.len() - keep;
        if emit_len == 0 {
            return StreamState::Continue;
        }
        let flow = on_text(&self.held[..emit_len]);
        self.held.drain(..emit_len);
        match flow {
            Flow::Continue => StreamState::Continue,
            Flow::Stop => StreamState::Cancelled,
        }
    }

    /// Hands out the held-back text at the end of generation (it can no longer become a stop
    /// string). An incomplete trailing character is shown as U+FFFD.
    pub fn finish(&mut self, on_text: &mut dyn FnMut(&str) -> Flow) -> Flow {
        if !self.partial.is_empty() {
            self.held.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        if self.held.is_empty() {
            return Flow::Continue;
        }
        let flow = on_text(&self.held);
        self.held.clear();
        flow
    }

    /// Byte offset in `held` of the first stop-string occurrence.
    fn earliest_stop(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min()
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn stop_prefix_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            // Only char boundaries of `held` can start a suffix.
            let max = (stop.len() - 1).min(self.held.len());
            for len in (best + 1..=max).rev() {
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start) && stop.starts_with(&self.held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

/// Removes and returns the longest valid UTF-8 prefix of `buf`, leaving an incomplete
/// trailing character in it. Invalid bytes (which no incomplete character explains) become
/// U+FFFD, as a lossy decode would show them.
fn take_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = buf;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // The prefix was just validated.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[n..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let consumed = buf.len() - rest.len();
    buf.drain(..consumed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, StreamState) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&stops);
        let mut out = Vec::new();
        let mut state = StreamState::Continue;
        for p in pieces {
            state = stream.push(p, &mut |t| {
                out.push(t.to_string());
                Flow::Continue
            });
            if state != StreamState::Continue {
                return (out, state);
            }
        }
        stream.finish(&mut |t| {
            out.push(t.to_string());
            Flow::Continue
        });
        (out, state)
    }

    #[test]
    fn multibyte_characters_split_across_tokens() {
        let euro = "€".as_bytes(); // 3 bytes
        let (out, _) = run(&[], &[b"a", &euro[..1], &euro[1..2], &euro[2..], b"b"]);
        assert_eq!(out, ["a", "€", "b"]);
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let (out, _) = run(&[], &[b"a\xffb"]);
        assert_eq!(out.concat(), "a\u{FFFD}b");
        let (out, _) = run(&[], &[b"a", &"€".as_bytes()[..2]]);
        assert_eq!(out.concat(), "a\u{FFFD}");
    }

    #[test]
    fn stop_string_spanning_pieces_is_not_emitted() {
        let (out, state) = run(&["\nUser:"], &[b"Paris", b".\nU", b"ser", b": hi"]);
        assert_eq!(state, StreamState::StopString);
        assert_eq!(out.concat(), "Paris.");
    }

    #[test]
    fn false_prefix_is_released() {
        let (out, state) = run(&["STOP"], &[b"ST", b"ART", b" ok"]);
        assert_eq!(state, StreamState::Continue);
        assert_eq!(out.concat(), "START ok");
        // "ST" was held back until "ART" showed it is not the stop string.
        assert_eq!(out[0], "START");
    }

    #[test]
    fn held_prefix_flushed_at_end() {
        let (out, _) = run(&["STOP"], &[b"go ST"]);
        assert_eq!(out, ["go ", "ST"]);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, state) = run(&["b", "xyz"], &[b"axyzb"]);
        assert_eq!(state, StreamState::StopString);
        assert_eq!(out.concat(), "a");
    }

    #[test]
    fn cancel_is_reported() {
        let mut stream = TextStream::new(&[]);
        assert_eq!(stream.push(b"hi", &mut |_| Flow::Stop), StreamState::Cancelled);
    }
}
