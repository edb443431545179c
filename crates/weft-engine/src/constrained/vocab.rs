//! The vocabulary as byte strings, sorted so that tokens sharing a prefix are neighbours:
//! computing a mask walks them once, reusing the grammar state of the shared prefix and
//! skipping every token that shares a prefix already rejected.

use weft_models::tokenizer::Tokenizer;

use super::json::JsonState;
use super::schema::JsonGrammar;

pub struct VocabIndex {
    /// Bytes of every token by id (empty for control tokens, never allowed).
    bytes: Vec<Vec<u8>>,
    /// Ids of the tokens with bytes, in byte order.
    order: Vec<u32>,
    /// Length of the prefix `order[i]` shares with `order[i - 1]`.
    shared: Vec<usize>,
}

impl VocabIndex {
    pub fn new(tokenizer: &Tokenizer) -> VocabIndex {
        let bytes: Vec<Vec<u8>> = (0..tokenizer.vocab_size() as u32)
            .map(|id| tokenizer.token_bytes(id, false))
            .collect();
        let mut order: Vec<u32> = (0..bytes.len() as u32)
            .filter(|&id| !bytes[id as usize].is_empty())
            .collect();
        order.sort_by(|&a, &b| bytes[a as usize].cmp(&bytes[b as usize]));
        let mut shared = vec![0; order.len()];
        for i in 1..order.len() {
            let (a, b) = (&bytes[order[i - 1] as usize], &bytes[order[i] as usize]);
            shared[i] = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        }
        VocabIndex {
            bytes,
            order,
            shared,
        }
    }

    pub fn bytes(&self, token: u32) -> &[u8] {
        self.bytes.get(token as usize).map_or(&[], Vec::as_slice)
    }

    /// Sets `allowed[id]` for every token whose bytes the grammar accepts from `state`.
    pub fn allowed(&self, g: &JsonGrammar, state: &JsonState, allowed: &mut Vec<bool>) {
        allowed.clear();
        allowed.resize(self.bytes.len(), false);
        // states[d]: the state after the first d bytes of the previous token, valid for
        // d <= valid.
        let mut states: Vec<JsonState> = vec![*state];
        let mut valid = 0;
        // The previous token failed at byte index `failed_at` (its prefix of failed_at + 1
        // bytes is rejected): a token sharing that prefix fails too.
        let mut failed_at = usize::MAX;
        for (&id, &shared) in self.order.iter().zip(&self.shared) {
            if failed_at != usize::MAX && shared > failed_at {
                continue;
            }
            failed_at = usize::MAX;
            let bytes = &self.bytes[id as usize];
            valid = valid.min(shared);
            let mut ok = true;
            for (d, &b) in bytes.iter().enumerate().skip(valid) {
                let mut s = states[d];
                if !s.feed(g, b) {
                    failed_at = d;
                    ok = false;
                    break;
                }
                if states.len() == d + 1 {
                    states.push(s);
                } else {
                    states[d + 1] = s;
                }
                valid = d + 1;
            }
            allowed[id as usize] = ok;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk must agree with feeding every token on its own.
    #[test]
    fn shared_prefix_walk_matches_token_by_token() {
        let words: Vec<&[u8]> = vec![
            b"{", b"{\"", b"{\"a", b"\"", b"\"a", b"\"ab", b"\"a\"", b"}", b"1", b"12", b"1.",
            b" ", b"  ", b"\": ", b"true", b"tr", b"x", b"[", b"\":", b"\"\"",
        ];
        let bytes: Vec<Vec<u8>> = words.iter().map(|w| w.to_vec()).collect();
        let mut order: Vec<u32> = (0..bytes.len() as u32).collect();
        order.sort_by(|&a, &b| bytes[a as usize].cmp(&bytes[b as usize]));
        let mut shared = vec![0; order.len()];
        for i in 1..order.len() {
            let (a, b) = (&bytes[order[i - 1] as usize], &bytes[order[i] as usize]);
            shared[i] = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        }
        let index = VocabIndex {
            bytes,
            order,
            shared,
        };
        let g = JsonGrammar::any_object();
        // Probe from several states along a document.
        let doc = b"{\"a\": [12, true], \"b\": \"x\"}";
        let mut state = JsonState::new(&g);
        let mut allowed = Vec::new();
        for &c in doc.iter() {
            index.allowed(&g, &state, &mut allowed);
            for (id, w) in words.iter().enumerate() {
                let mut s = state;
                assert_eq!(
                    allowed[id],
                    s.feed_all(&g, w),
                    "token {:?}",
                    String::from_utf8_lossy(w)
                );
            }
            assert!(state.feed(&g, c));
        }
    }
}
