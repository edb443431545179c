//! Byte-level BPE merges within one pre-tokenized piece, lowest rank first and leftmost among
//! equal ranks (as llama.cpp's `llm_tokenizer_bpe_session` and Hugging Face's `Word::merge_all`).
//! The symbols form a linked list and the candidate merges a binary heap, so a piece of n bytes
//! takes O(n log n) rather than one scan of all pairs per merge.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};

use super::byte_to_char;

/// Merge table keyed by symbol ids. A symbol's id is its text's token id when the text is a
/// token; merge lists can also name texts that are not tokens, and those get ids past the
/// vocabulary (`n_tokens + i`, described by `fallbacks[i]`).
pub(super) struct BpeMerges {
    pairs: HashMap<(u32, u32), Merge>,
    /// The symbol of each byte's GPT-2 character: a piece's symbols before any merge.
    byte_symbols: Box<[u32; 256]>,
    n_tokens: u32,
    /// For each symbol that is not a token: the tokens of its characters (those that are
    /// tokens), which stand for it if no merge absorbs it.
    fallbacks: Vec<Vec<u32>>,
}

#[derive(Clone, Copy)]
struct Merge {
    /// Position in the merge list: lower merges first.
    rank: u32,
    merged: u32,
}

/// Buffers kept from one piece to the next.
#[derive(Default)]
pub(super) struct BpeScratch {
    symbols: Vec<Symbol>,
    candidates: BinaryHeap<Reverse<Candidate>>,
}

/// A symbol of the piece being merged, indexed by the byte offset where it starts; merged
/// symbols leave the list and are marked `DEAD`.
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;
const DEAD: u32 = u32::MAX;

/// A queued merge of the symbol at `left` with the one after it. Ordered by rank, then by
/// position, so the heap's minimum is the merge the quadratic algorithm would pick. Entries
/// go stale when a neighbour merges first; they are checked when popped. (Small entries:
/// the heap of a long piece is larger than the caches.)
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: usize,
}

impl BpeMerges {
    /// `merges` in rank order; a pair listed twice keeps its first rank.
    pub(super) fn new<'m>(
        merges: impl IntoIterator<Item = (&'m str, &'m str)>,
        ids: &HashMap<String, u32>,
        n_tokens: usize,
    ) -> BpeMerges {
        let mut symbols = Interner {
            ids,
            n_tokens: n_tokens as u32,
            extra: HashMap::new(),
            fallbacks: Vec::new(),
        };
        let byte_symbols = Box::new(std::array::from_fn(|b| {
            symbols.intern(byte_to_char(b as u8).encode_utf8(&mut [0; 4]))
        }));
        let mut pairs = HashMap::new();
        for (rank, (a, b)) in merges.into_iter().enumerate() {
            let key = (symbols.intern(a), symbols.intern(b));
            if let Entry::Vacant(slot) = pairs.entry(key) {
                let merged = symbols.intern(&format!("{a}{b}"));
                slot.insert(Merge {
                    rank: rank as u32,
                    merged,
                });
            }
        }
        BpeMerges {
            pairs,
            byte_symbols,
            n_tokens: n_tokens as u32,
            fallbacks: symbols.fallbacks,
        }
    }

    /// Appends the tokens of one piece (raw bytes, before the GPT-2 byte mapping).
    pub(super) fn encode_piece(&self, piece: &[u8], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        self.merge(piece, scratch);
        let symbols = &scratch.symbols;
        let mut i = if symbols.is_empty() { NONE } else { 0 };
        while i != NONE {
            let id = symbols[i].id;
            match id.checked_sub(self.n_tokens) {
                None => out.push(id),
                Some(extra) => out.extend_from_slice(&self.fallbacks[extra as usize]),
            }
            i = symbols[i].next;
        }
    }

    /// Leaves the merged symbols of `piece` in `scratch.symbols`, a list starting at 0.
    fn merge(&self, piece: &[u8], scratch: &mut BpeScratch) {
        let BpeScratch {
            symbols,
            candidates,
        } = scratch;
        symbols.clear();
        symbols.extend(piece.iter().enumerate().map(|(i, &b)| Symbol {
            id: self.byte_symbols[b as usize],
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i + 1 == piece.len() { NONE } else { i + 1 },
        }));
        candidates.clear();
        for left in 0..symbols.len() {
            self.queue(symbols, candidates, left);
        }
        while let Some(Reverse(c)) = candidates.pop() {
            let Some(merged) = self.current_merge(symbols, &c) else {
                continue;
            };
            let right = symbols[c.left].next;
            let after = symbols[right].next;
            symbols[c.left].id = merged;
            symbols[c.left].next = after;
            symbols[right].id = DEAD;
            if after != NONE {
                symbols[after].prev = c.left;
            }
            self.queue(symbols, candidates, c.left);
            let before = symbols[c.left].prev;
            if before != NONE {
                self.queue(symbols, candidates, before);
            }
        }
    }

    /// Queues the merge of the symbol at `left` with the next one, if they have one.
    fn queue(
        &self,
        symbols: &[Symbol],
        candidates: &mut BinaryHeap<Reverse<Candidate>>,
        left: usize,
    ) {
        let right = symbols[left].next;
        if right == NONE {
            return;
        }
        if let Some(m) = self.pairs.get(&(symbols[left].id, symbols[right].id)) {
            candidates.push(Reverse(Candidate { rank: m.rank, left }));
        }
    }

    /// The merged symbol if the symbol at `c.left` is live and its pair with the next one
    /// still has the rank queued. A rank names one pair of texts, and a symbol's text only
    /// grows, so then the pair is the one queued.
    fn current_merge(&self, symbols: &[Symbol], c: &Candidate) -> Option<u32> {
        let left = symbols[c.left];
        if left.id == DEAD || left.next == NONE {
            return None;
        }
        let m = self.pairs.get(&(left.id, symbols[left.next].id))?;
        (m.rank == c.rank).then_some(m.merged)
    }
}

/// Gives every text in the merge list a symbol id, for lookups that compare integers.
struct Interner<'a> {
    ids: &'a HashMap<String, u32>,
    n_tokens: u32,
    extra: HashMap<String, u32>,
    fallbacks: Vec<Vec<u32>>,
}

impl Interner<'_> {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        if let Some(&id) = self.extra.get(text) {
            return id;
        }
        let id = self.n_tokens + self.fallbacks.len() as u32;
        let mut buf = [0; 4];
        self.fallbacks.push(
            text.chars()
                .filter_map(|c| self.ids.get(&*c.encode_utf8(&mut buf)).copied())
                .collect(),
        );
        self.extra.insert(text.to_owned(), id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The algorithm this module replaces: merge the lowest-ranked (then leftmost) pair until
    /// none is left, scanning every pair each time; a symbol that is not a token stands for
    /// the tokens of its characters.
    fn reference(
        ranks: &HashMap<(String, String), usize>,
        ids: &HashMap<String, u32>,
        piece: &str,
    ) -> Vec<u32> {
        let mut syms: Vec<String> = piece.chars().map(String::from).collect();
        while let Some((_, i)) = syms
            .windows(2)
            .enumerate()
            .filter_map(|(i, w)| ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, i)))
            .min()
        {
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        let mut out = Vec::new();
        for s in syms {
            match ids.get(&s) {
                Some(&id) => out.push(id),
                None => out.extend(s.chars().filter_map(|c| ids.get(&c.to_string()).copied())),
            }
        }
        out
    }

    /// A random merge list over "abcd": each side is a letter or the result of an earlier
    /// merge (so most merges can happen), with repeats; and a random vocabulary drawn from
    /// the letters and merge results, so some symbols and some merge results are not tokens.
    fn table() -> impl Strategy<Value = (Vec<(String, String)>, HashMap<String, u32>)> {
        let merges = prop::collection::vec(
            (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
            0..24,
        );
        (merges, prop::collection::vec(any::<bool>(), 28)).prop_map(|(picks, in_vocab)| {
            let mut texts: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
            let mut merges = Vec::new();
            for (a, b) in picks {
                let (a, b) = (a.get(&texts).clone(), b.get(&texts).clone());
                texts.push(format!("{a}{b}"));
                merges.push((a, b));
            }
            let mut ids = HashMap::new();
            for (text, keep) in texts.into_iter().zip(in_vocab) {
                let next = ids.len() as u32;
                if keep {
                    ids.entry(text).or_insert(next);
                }
            }
            (merges, ids)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn merges_like_the_quadratic_algorithm((merges, ids) in table(), piece in "[abcd]{0,24}") {
            let n_tokens = ids.len() + 3;
            let table = BpeMerges::new(merges.iter().map(|(a, b)| (a.as_str(), b.as_str())), &ids, n_tokens);
            let mut ranks = HashMap::new();
            for (rank, pair) in merges.into_iter().enumerate() {
                ranks.entry(pair).or_insert(rank);
            }
            let mut got = Vec::new();
            table.encode_piece(piece.as_bytes(), &mut BpeScratch::default(), &mut got);
            prop_assert_eq!(got, reference(&ranks, &ids, &piece));
        }
    }

    #[test]
    fn equal_ranks_merge_leftmost_first() {
        // "aaa" with the single merge a+a: the left pair merges, leaving "aa", "a".
        let ids: HashMap<String, u32> = [("a", 0), ("aa", 1)]
            .map(|(t, i)| (t.to_string(), i))
            .into();
        let table = BpeMerges::new([("a", "a")], &ids, 2);
        let mut out = Vec::new();
        table.encode_piece(b"aaa", &mut BpeScratch::default(), &mut out);
        assert_eq!(out, [1, 0]);
    }
}
