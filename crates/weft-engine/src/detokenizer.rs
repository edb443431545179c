//! Turns a stream of token ids into a stream of valid UTF-8 text: a token may end in the
//! middle of a multi-byte character, so bytes are held back until they complete one.

use weft_models::tokenizer::Tokenizer;

#[derive(Default)]
pub struct Detokenizer {
    pending: Vec<u8>,
}

impl Detokenizer {
    /// Appends `token`'s bytes and returns the text that is now complete.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> String {
        self.pending
            .extend_from_slice(&tokenizer.token_bytes(token, false));
        let (text, used) = complete_text(&self.pending);
        self.pending.drain(..used);
        text
    }

    /// Whatever is still held back, at the end of generation. A character cut off by the
    /// end (`max_tokens`, a stop, a cancel) is dropped, so that a reply ends at its last
    /// whole character rather than in U+FFFD.
    pub fn finish(&mut self) -> String {
        let (text, _) = complete_text(&self.pending);
        self.pending.clear();
        text
    }
}

/// The text of `bytes` up to an unfinished character at their end, and how many bytes that
/// is. Bytes that no continuation can make valid become U+FFFD (as `from_utf8_lossy` does)
/// rather than holding the text back forever.
fn complete_text(bytes: &[u8]) -> (String, usize) {
    let mut text = String::with_capacity(bytes.len());
    let mut used = 0;
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        used += chunk.valid().len();
        let bad = chunk.invalid();
        if bad.is_empty() {
            continue;
        }
        let unfinished_tail = used + bad.len() == bytes.len()
            && std::str::from_utf8(bad).is_err_and(|e| e.error_len().is_none());
        if unfinished_tail {
            break;
        }
        text.push(char::REPLACEMENT_CHARACTER);
        used += bad.len();
    }
    (text, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_character_is_held_then_dropped_at_the_end() {
        let globe = "🌍".as_bytes();
        let mut bytes = b"ok ".to_vec();
        bytes.extend_from_slice(&globe[..3]);
        assert_eq!(complete_text(&bytes), ("ok ".to_owned(), 3));
        let mut d = Detokenizer {
            pending: bytes.clone(),
        };
        assert_eq!(d.finish(), "ok ");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_are_replaced_and_do_not_hold_text_back() {
        // 0xFF can never start a character; the cut-off globe after it is still held.
        let mut bytes = vec![b'a', 0xFF, b'b'];
        bytes.extend_from_slice(&"🌍".as_bytes()[..2]);
        assert_eq!(complete_text(&bytes), ("a\u{FFFD}b".to_owned(), 3));
        // A lead byte followed by a non-continuation is invalid, not unfinished.
        assert_eq!(complete_text(&[0xF0, b'x']), ("\u{FFFD}x".to_owned(), 2));
        assert_eq!(
            complete_text("日本".as_bytes()),
            ("日本".to_owned(), "日本".len())
        );
    }
}
