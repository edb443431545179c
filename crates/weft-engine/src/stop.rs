//! Stop strings over streamed text.
//!
//! Generated text arrives in pieces (one detokenized token at a time). [`StopMatcher`]
//! passes text on as soon as it cannot be the beginning of a stop string, holds back a
//! tail that might still become one, and when a stop string completes, releases the text
//! before it and reports the stop. The stop string itself is never emitted.
//!
//! The result does not depend on how the text is split into pieces: generation stops at
//! the stop string occurrence that *ends* first in the stream (as if text arrived one
//! character at a time); when several end at the same place, the one starting earliest
//! (the longest) wins.

/// What a [`StopMatcher::push`] releases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that can be shown now.
    pub emit: String,
    /// A stop string was found: generation should end (no further text will be emitted).
    pub stopped: bool,
}

/// Finds stop strings in streamed text; see the module documentation.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Length in bytes of the longest stop string.
    max_len: usize,
    /// Text received but not yet emitted: always a proper prefix of some stop string.
    held: String,
    /// Index into `stops` of the stop string that matched.
    matched: Option<usize>,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would stop before any text).
    pub fn new(stops: Vec<String>) -> StopMatcher {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        StopMatcher {
            stops,
            max_len,
            held: String::new(),
            matched: None,
        }
    }

    /// The stop strings in use.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Whether a stop string has been found.
    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that ended generation, if any.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// The text currently held back as a possible start of a stop string.
    pub fn held(&self) -> &str {
        &self.held
    }

    /// Feeds the next piece of generated text.
    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.matched.is_some() {
            return StopOutput {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutput {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(text);

        // The occurrence that ends first; among equal ends, the one that starts first.
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, stop index)
        for (i, stop) in self.stops.iter().enumerate() {
            if let Some(start) = self.held.find(stop.as_str()) {
                let key = (start + stop.len(), start, i);
                if best.is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                    best = Some(key);
                }
            }
        }
        if let Some((_, start, i)) = best {
            self.held.truncate(start);
            self.matched = Some(i);
            return StopOutput {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }

        // Hold back the longest tail that is a proper prefix of some stop string.
        let keep_from = self.partial_match_start();
        let emit = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        StopOutput {
            emit,
            stopped: false,
        }
    }

    /// Releases the held text at the end of generation (nothing if a stop was found).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Byte offset in `held` of the longest suffix that is a proper prefix of a stop
    /// string, or `held.len()` if there is none.
    fn partial_match_start(&self) -> usize {
        let len = self.held.len();
        let earliest = len.saturating_sub(self.max_len.saturating_sub(1));
        (earliest..len)
            .filter(|&i| self.held.is_char_boundary(i))
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()).collect())
    }

    /// Pushes every piece and returns (all emitted text, stopped, pushes that emitted).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = matcher(stops);
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.stopped {
                assert!(m.is_stopped());
                assert_eq!(m.finish(), "");
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    /// The specification: text before the occurrence that ends first (ties: starts first).
    fn reference(stops: &[&str], text: &str) -> (String, bool) {
        let mut best: Option<(usize, usize)> = None;
        for s in stops.iter().filter(|s| !s.is_empty()) {
            for (start, _) in text.match_indices(s) {
                let key = (start + s.len(), start);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
        match best {
            Some((_, start)) => (text[..start].to_owned(), true),
            None => (text.to_owned(), false),
        }
    }

    #[test]
    fn emits_text_that_cannot_start_a_stop() {
        let mut m = matcher(&["</s>"]);
        assert_eq!(
            m.push("Hello"),
            StopOutput {
                emit: "Hello".into(),
                stopped: false
            }
        );
        assert_eq!(m.push(" wor<").emit, " wor");
        assert_eq!(m.held(), "<");
        assert_eq!(m.push("b>").emit, "<b>");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_split_across_pushes() {
        let mut m = matcher(&["<|im_end|>"]);
        assert_eq!(m.push("Answer: 4<|im").emit, "Answer: 4");
        assert_eq!(m.push("_en").emit, "");
        let o = m.push("d|>\nignored");
        assert_eq!(o.emit, "");
        assert!(o.stopped);
        assert_eq!(m.matched(), Some("<|im_end|>"));
        assert_eq!(m.finish(), "");
        // After the stop nothing more comes out.
        assert_eq!(
            m.push("more"),
            StopOutput {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn stop_inside_one_push_emits_the_text_before_it() {
        let mut m = matcher(&["STOP"]);
        let o = m.push("abcSTOPdef");
        assert_eq!(
            o,
            StopOutput {
                emit: "abc".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_prefix_that_fails_is_released() {
        assert_eq!(run(&["abc"], &["xa", "b", "d"]), ("xabd".into(), false));
        assert_eq!(run(&["abc"], &["ab"]), ("ab".into(), false));
    }

    #[test]
    fn overlapping_prefixes() {
        // "aab" after "aaab": the held "aa" is not a match start, "aab" is.
        assert_eq!(
            run(&["aab"], &["a", "a", "a", "b", "c"]),
            ("a".into(), true)
        );
        assert_eq!(run(&["abab"], &["ab", "aba", "b"]), ("".into(), true));
        assert_eq!(run(&["abac"], &["ab", "ab", "ac"]), ("ab".into(), true));
        // Two stops sharing a prefix: the first to complete wins.
        assert_eq!(
            run(&["abcd", "bc"], &["xa", "b", "c", "d"]),
            ("xa".into(), true)
        );
        // Same end: the longer one (earlier start) wins.
        assert_eq!(run(&["cd", "bcd"], &["abcde"]), ("a".into(), true));
        let mut m = matcher(&["abcd", "bc"]);
        assert!(m.push("zzabc").stopped);
        assert_eq!(m.matched(), Some("bc"));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn unicode_is_split_on_char_boundaries() {
        // Stop shares its first byte with other characters: "é" (C3 A9) vs "ë" (C3 AB).
        let (out, stopped) = run(&["ë!"], &["caf", "é", "ë", "?", "ë", "!", "x"]);
        assert_eq!((out.as_str(), stopped), ("caféë?", true));
        let mut m = matcher(&["🛑 end"]);
        assert_eq!(m.push("héllo 🛑").emit, "héllo ");
        assert_eq!(m.held(), "🛑");
        assert_eq!(m.push(" en").emit, "");
        assert_eq!(m.push("ough").emit, "🛑 enough");
        assert_eq!(
            run(&["日本"], &["こんにちは日", "本語"]),
            ("こんにちは".into(), true)
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn alphabet_string(max: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '🛑', ' ']), 0..max)
                .prop_map(|v| v.into_iter().collect())
        }

        proptest! {
            #[test]
            fn chunking_does_not_change_the_result(
                text in alphabet_string(40),
                stops in prop::collection::vec(alphabet_string(4), 0..4),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            ) {
                // Split the text at arbitrary char boundaries.
                let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
                let mut points: Vec<usize> = cuts.iter().map(|c| bounds[c.index(bounds.len())]).collect();
                points.push(0);
                points.push(text.len());
                points.sort_unstable();
                points.dedup();
                let pieces: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
                let stops: Vec<&str> = stops.iter().map(String::as_str).collect();
                prop_assert_eq!(run(&stops, &pieces), reference(&stops, &text));

                // Emitted text is released as early as possible: after each push, what is
                // held is a proper prefix of some stop string.
                let mut m = matcher(&stops);
                for p in &pieces {
                    if m.push(p).stopped { break; }
                    let held = m.held();
                    prop_assert!(held.is_empty() || stops.iter().any(|s| s.len() > held.len() && s.starts_with(held)));
                }
            }
        }
    }
}
