//! Text handling between token bytes and the API: incremental UTF-8 decoding, stop sequences,
//! and the fallback chat template. Pure functions, no llama.cpp, so they are unit-tested alone.

/// Turns a stream of token bytes into UTF-8 text, one token at a time.
///
/// # Guarantees
/// Never panics and never emits invalid UTF-8: an incomplete multi-byte sequence at the end of the
/// bytes seen so far is held back until the next token completes it; an invalid sequence becomes
/// U+FFFD. Random-weight models produce arbitrary bytes, so both cases are routine.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // valid_up_to guarantees this prefix is UTF-8.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            // An incomplete sequence at the end: keep it for the next token.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Ends the stream: an incomplete tail becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let tail = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        tail
    }
}

/// Finds stop sequences in streamed text, holding back only what could still become one.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is certainly output (never part of a stop sequence).
    pub emit: String,
    /// A stop sequence was found; generation must end. The stop sequence itself is not emitted.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopStep {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopStep {
                emit: std::mem::take(&mut self.held),
                stopped: false,
            };
        }
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix of `held` that is a proper prefix of a stop sequence.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices() {
            let suffix = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(suffix)) {
                keep_from = i;
                break;
            }
        }
        let emit = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Ends the stream without a stop: whatever was held back is output after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The chat template used when the GGUF has none, or one llama.cpp's built-in template engine
/// does not recognise: ChatML (`<|im_start|>role\ncontent<|im_end|>\n`, then
/// `<|im_start|>assistant\n`), the format of many open chat models.
pub fn chatml(messages: &[(String, String)]) -> String {
    let mut s = String::new();
    for (role, content) in messages {
        s.push_str("<|im_start|>");
        s.push_str(role);
        s.push('\n');
        s.push_str(content);
        s.push_str("<|im_end|>\n");
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens_is_joined() {
        let mut d = Utf8Decoder::new();
        let bytes = "é€😀".as_bytes();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&d.push(&[*b]));
        }
        out.push_str(&d.finish());
        assert_eq!(out, "é€😀");
    }

    #[test]
    fn invalid_utf8_is_replaced_never_panics() {
        let mut d = Utf8Decoder::new();
        assert_eq!(d.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(d.push(&[0xe2, 0x82]), "");
        assert_eq!(d.push(b"x"), "\u{fffd}x");
        assert_eq!(d.push(&[0xf0, 0x9f]), "");
        assert_eq!(d.finish(), "\u{fffd}");
        // Every byte value, alone and in pairs.
        for a in 0..=255u8 {
            for b in [0u8, 0x80, 0xbf, 0xc3, 0xff] {
                let mut d = Utf8Decoder::new();
                let s = d.push(&[a, b]) + &d.finish();
                assert!(!s.is_empty());
            }
        }
    }

    #[test]
    fn stop_sequence_split_across_pushes_is_found_and_not_emitted() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        let a = m.push("hello E");
        assert_eq!(a.emit, "hello ");
        assert!(!a.stopped);
        let b = m.push("N");
        assert_eq!(b.emit, "");
        let c = m.push("Dtrailing");
        assert_eq!(
            c,
            StopStep {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_prefix_is_released_when_it_does_not_complete() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("xE").emit, "x");
        assert_eq!(m.push("Nx").emit, "ENx");
        assert_eq!(m.push("EN").emit, "");
        assert_eq!(m.finish(), "EN");
    }

    #[test]
    fn earliest_stop_wins() {
        let mut m = StopMatcher::new(vec!["b".into(), "a".into()]);
        assert_eq!(m.push("xxab").emit, "xx");
    }

    #[test]
    fn chatml_ends_with_assistant_turn() {
        let p = chatml(&[("user".into(), "hi".into())]);
        assert_eq!(p, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }
}
