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
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An invalid sequence that is not just an unfinished tail will never complete:
            // emit it (lossily) rather than holding text back forever.
            Err(e) if e.error_len().is_some() => self.pending.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }

    /// Whatever is still held back, lossily decoded (end of generation).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}
