//! Special-token splitting as llama.cpp does it (`tokenizer_st_partition`): the specials in
//! priority order (longest text first, then lowest id), each taking its leftmost
//! non-overlapping occurrences in what the specials before it left of the text.
//!
//! One find pass per special costs specials × text length (Gemma 3 has over 6,000 specials).
//! Instead, a trie of the texts finds the longest special starting at each position, and a
//! heap hands out these candidates in priority order, then position order: the order in which
//! the one-pass-per-special algorithm would meet them. A candidate that overlaps text already
//! taken is dropped, or, when only its tail overlaps, makes way for the next shorter special
//! starting at the same position (whose turn comes later). The trie walk from a position
//! stops at the first byte no special continues with, so the work per byte is bounded by the
//! longest special, whatever the text.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, PartialEq)]
pub(super) enum Part<'t> {
    Text(&'t str),
    Special(u32),
}

pub(super) struct SpecialMatcher {
    /// Byte trie of the specials' texts; node 0 is the root.
    nodes: Vec<Node>,
    /// By priority (the rank the nodes refer to).
    specials: Vec<Special>,
}

#[derive(Default)]
struct Node {
    /// Children by byte, sorted.
    edges: Vec<(u8, u32)>,
    /// Rank of the special whose text ends here.
    special: Option<u32>,
}

struct Special {
    id: u32,
    len: usize,
    /// Rank of the longest special whose text is a proper prefix of this one's.
    shorter: Option<u32>,
}

impl SpecialMatcher {
    /// `specials` as (token id, text), highest priority first. A text listed again keeps its
    /// first id (the later one could only match where the first already did), and an empty
    /// text matches nothing.
    pub(super) fn new<'a>(specials: impl IntoIterator<Item = (u32, &'a str)>) -> SpecialMatcher {
        let mut matcher = SpecialMatcher {
            nodes: vec![Node::default()],
            specials: Vec::new(),
        };
        for (id, text) in specials.into_iter().filter(|(_, t)| !t.is_empty()) {
            let node = matcher.insert(text.as_bytes());
            if matcher.nodes[node].special.is_none() {
                matcher.nodes[node].special = Some(matcher.specials.len() as u32);
                matcher.specials.push(Special {
                    id,
                    len: text.len(),
                    shorter: None,
                });
            }
        }
        matcher.link_shorter();
        matcher
    }

    fn insert(&mut self, text: &[u8]) -> usize {
        let mut node = 0;
        for &b in text {
            node = match self.child(node, b) {
                Some(child) => child,
                None => {
                    let child = self.nodes.len();
                    let edges = &mut self.nodes[node].edges;
                    let at = edges.partition_point(|&(e, _)| e < b);
                    edges.insert(at, (b, child as u32));
                    self.nodes.push(Node::default());
                    child
                }
            };
        }
        node
    }

    fn child(&self, node: usize, b: u8) -> Option<usize> {
        let edges = &self.nodes[node].edges;
        let at = edges.binary_search_by_key(&b, |&(e, _)| e).ok()?;
        Some(edges[at].1 as usize)
    }

    /// Sets each special's `shorter`, walking the trie with the nearest special above.
    fn link_shorter(&mut self) {
        let mut stack = vec![(0, None)];
        while let Some((node, above)) = stack.pop() {
            let here = self.nodes[node].special;
            if let Some(rank) = here {
                self.specials[rank as usize].shorter = above;
            }
            let below = here.or(above);
            stack.extend(
                self.nodes[node]
                    .edges
                    .iter()
                    .map(|&(_, c)| (c as usize, below)),
            );
        }
    }

    /// Rank of the longest special that `bytes` starts with.
    fn longest_at(&self, bytes: &[u8]) -> Option<u32> {
        let (mut node, mut found) = (0, None);
        for &b in bytes {
            let Some(child) = self.child(node, b) else {
                break;
            };
            node = child;
            found = self.nodes[node].special.or(found);
        }
        found
    }

    /// Splits `text` into special tokens and the text between them.
    pub(super) fn partition<'t>(&self, text: &'t str) -> Vec<Part<'t>> {
        let mut parts = Vec::new();
        let mut last = 0;
        for (start, rank) in self.occurrences(text.as_bytes()) {
            let special = &self.specials[rank as usize];
            if start > last {
                parts.push(Part::Text(&text[last..start]));
            }
            parts.push(Part::Special(special.id));
            last = start + special.len;
        }
        if last < text.len() {
            parts.push(Part::Text(&text[last..]));
        }
        parts
    }

    /// The (start, rank) of the occurrences the specials take, by position.
    fn occurrences(&self, bytes: &[u8]) -> Vec<(usize, u32)> {
        let mut candidates: BinaryHeap<Reverse<(u32, usize)>> = (0..bytes.len())
            .filter_map(|start| Some(Reverse((self.longest_at(&bytes[start..])?, start))))
            .collect();
        if candidates.is_empty() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut covered = vec![false; bytes.len()];
        while let Some(Reverse((rank, start))) = candidates.pop() {
            let special = &self.specials[rank as usize];
            let span = &mut covered[start..start + special.len];
            if !span.contains(&true) {
                span.fill(true);
                taken.push((start, rank));
            } else if !span[0] {
                if let Some(shorter) = special.shorter {
                    candidates.push(Reverse((shorter, start)));
                }
            }
        }
        taken.sort_unstable();
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The algorithm this module replaces: one pass per special over the text parts left.
    /// (It kept an empty text as one empty part when no special applied; an empty text has
    /// no parts now, as in llama.cpp.)
    fn reference<'t>(specials: &[(u32, String)], text: &'t str) -> Vec<Part<'t>> {
        let mut parts: Vec<Part> = [Part::Text(text)]
            .into_iter()
            .filter(|_| !text.is_empty())
            .collect();
        for (id, needle) in specials {
            let mut next = Vec::new();
            for part in parts {
                let Part::Text(mut t) = part else {
                    next.push(part);
                    continue;
                };
                while let Some(pos) = t.find(needle.as_str()) {
                    if pos > 0 {
                        next.push(Part::Text(&t[..pos]));
                    }
                    next.push(Part::Special(*id));
                    t = &t[pos + needle.len()..];
                }
                if !t.is_empty() {
                    next.push(Part::Text(t));
                }
            }
            parts = next;
        }
        parts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Small alphabets make specials nest and overlap: prefixes of each other, the same
        /// text twice, one ending where another starts.
        #[test]
        fn partitions_like_one_pass_per_special(
            texts in prop::collection::vec("[ab<é]{1,4}", 0..8),
            text in "[ab<é]{0,40}",
        ) {
            let mut specials: Vec<(u32, String)> =
                texts.into_iter().enumerate().map(|(i, t)| (i as u32, t)).collect();
            specials.sort_by_key(|(_, t)| Reverse(t.len()));
            let matcher = SpecialMatcher::new(specials.iter().map(|(id, t)| (*id, t.as_str())));
            prop_assert_eq!(matcher.partition(&text), reference(&specials, &text));
        }
    }

    #[test]
    fn longer_special_first_even_when_a_shorter_one_starts_earlier() {
        let matcher = SpecialMatcher::new([(0, "bcd"), (1, "ab")]);
        assert_eq!(
            matcher.partition("abcd"),
            [Part::Text("a"), Part::Special(0)]
        );
    }

    #[test]
    fn blocked_special_gives_way_to_a_shorter_one_at_its_start() {
        // "<<x" overlaps "x>>>", which goes first (longer), so "<<" takes its start.
        let matcher = SpecialMatcher::new([(0, "x>>>"), (1, "<<x"), (2, "<<")]);
        assert_eq!(
            matcher.partition("<<x>>>"),
            [Part::Special(2), Part::Special(0)]
        );
    }
}
