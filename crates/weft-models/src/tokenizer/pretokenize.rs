//! Pre-tokenizers: the splits of text into pieces that BPE merges within. They are llama.cpp's
//! regular expressions (kept in the tests, which check that these agree with them) written
//! out by hand, because a backtracking engine runs those expressions with a stack that grows
//! with the length of a whitespace run: fancy-regex gives up on runs of about a million
//! characters. Written out, each split is one left-to-right pass.
//!
//! Each split emulates a regex `find_iter`: at each position, the first alternative that
//! matches there wins; text no alternative matches becomes a piece of its own.

use std::sync::OnceLock;

/// One split of a pre-tokenizer (several run in sequence, each on the previous one's pieces).
#[derive(Clone, Copy, Debug)]
pub(super) enum Split {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|`
    /// `\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    /// (Llama 3 groups up to 3 digits, Qwen2 1).
    Llama3 { max_digits: usize },
    /// `\p{N}`: each digit alone.
    Digits,
}

/// Pieces of `text` after every split in `splits`, in order; empty pieces are left out.
pub(super) fn pieces<'t>(splits: &[Split], text: &'t str) -> Vec<&'t str> {
    let mut pieces = vec![text];
    for &split in splits {
        let mut next = Vec::with_capacity(pieces.len());
        for piece in pieces {
            split.apply(piece, &mut next);
        }
        pieces = next;
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

impl Split {
    fn apply<'t>(self, text: &'t str, out: &mut Vec<&'t str>) {
        let (mut i, mut unmatched) = (0, 0);
        while let Some(c) = text[i..].chars().next() {
            match self.match_at(text, i) {
                Some(end) => {
                    if unmatched < i {
                        out.push(&text[unmatched..i]);
                    }
                    out.push(&text[i..end]);
                    (i, unmatched) = (end, end);
                }
                None => i += c.len_utf8(),
            }
        }
        if unmatched < text.len() {
            out.push(&text[unmatched..]);
        }
    }

    /// End of the match starting at `i`, if any. Every alternative consumes at least one
    /// character, and none looks further than the run it matches plus one character, except
    /// the whitespace ones, which look at their whole run.
    fn match_at(self, text: &str, i: usize) -> Option<usize> {
        match self {
            Split::Gpt2 => contraction(text, i, false)
                .or_else(|| spaced_run(text, i, &[Class::Letter, Class::Number, Class::Other]))
                .or_else(|| spaces_before_text(text, i)),
            Split::Llama3 { max_digits } => contraction(text, i, true)
                .or_else(|| letters_after_one_other(text, i))
                .or_else(|| digits(text, i, max_digits))
                .or_else(|| {
                    let end = spaced_run(text, i, &[Class::Other])?;
                    Some(run_end(text, end, |c| c == '\r' || c == '\n'))
                })
                .or_else(|| spaces_to_last_newline(text, i))
                .or_else(|| spaces_before_text(text, i))
                .or_else(|| Some(run_end(text, i, is_space)).filter(|&end| end > i)),
            Split::Digits => digits(text, i, 1),
        }
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d`, in ASCII either case when `any_case`.
fn contraction(text: &str, i: usize, any_case: bool) -> Option<usize> {
    let rest = text[i..].strip_prefix('\'')?.as_bytes();
    let lower = |k: usize| {
        rest.get(k)
            .map(|&b| if any_case { b.to_ascii_lowercase() } else { b })
    };
    let len = match (lower(0)?, lower(1)) {
        (b'r', Some(b'e')) | (b'v', Some(b'e')) | (b'l', Some(b'l')) => 3,
        (b's' | b't' | b'm' | b'd', _) => 2,
        _ => return None,
    };
    Some(i + len)
}

/// ` ?X+` for the first class X in `classes` that the character after an optional space
/// belongs to. (A space is not in any class here, so with no such character there is no
/// match without the space either.)
fn spaced_run(text: &str, i: usize, classes: &[Class]) -> Option<usize> {
    let start = if text[i..].starts_with(' ') { i + 1 } else { i };
    let class = class(text[start..].chars().next()?);
    classes
        .contains(&class)
        .then(|| run_end(text, start, |c| self::class(c) == class))
}

/// `[^\r\n\p{L}\p{N}]?\p{L}+`: letters, with the one character before them when that is not
/// a line break or a digit.
fn letters_after_one_other(text: &str, i: usize) -> Option<usize> {
    let mut chars = text[i..].chars();
    let first = chars.next()?;
    let is_letter = |c: char| class(c) == Class::Letter;
    if is_letter(first) {
        return Some(run_end(text, i, is_letter));
    }
    let takes_first = first != '\r' && first != '\n' && class(first) != Class::Number;
    (takes_first && chars.next().is_some_and(is_letter))
        .then(|| run_end(text, i + first.len_utf8(), is_letter))
}

/// `\p{N}{1,max}`.
fn digits(text: &str, i: usize, max: usize) -> Option<usize> {
    text[i..]
        .char_indices()
        .take(max)
        .take_while(|&(_, c)| class(c) == Class::Number)
        .last()
        .map(|(k, c)| i + k + c.len_utf8())
}

/// `\s*[\r\n]+`: whitespace up to and including the run's last line break.
fn spaces_to_last_newline(text: &str, i: usize) -> Option<usize> {
    let end = run_end(text, i, is_space);
    text[i..end].rfind(['\r', '\n']).map(|k| i + k + 1)
}

/// `\s+(?!\S)`: a whitespace run, less its last character when text follows (that character
/// then starts the next piece).
fn spaces_before_text(text: &str, i: usize) -> Option<usize> {
    let end = run_end(text, i, is_space);
    if end == text.len() {
        return Some(end).filter(|&end| end > i);
    }
    let (last, _) = text[i..end].char_indices().next_back()?;
    Some(i + last).filter(|&end| end > i)
}

/// End of the run of characters from `i` that satisfy `pred`.
fn run_end(text: &str, i: usize, pred: impl Fn(char) -> bool) -> usize {
    text[i..]
        .char_indices()
        .find(|&(_, c)| !pred(c))
        .map_or(text.len(), |(k, _)| i + k)
}

/// The character classes the expressions use. Regex `\p{L}`, `\p{N}` and `\s` (White_Space)
/// do not overlap; everything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn is_space(c: char) -> bool {
    class(c) == Class::Space
}

/// A character's class, from the Unicode tables of the regex crates (so that it agrees with
/// the expressions exactly): a table for ASCII, a binary search of ranges beyond.
fn class(c: char) -> Class {
    let tables = tables();
    if let Some(&class) = tables.ascii.get(c as usize) {
        return class;
    }
    match tables.ranges.binary_search_by(|&(start, end, _)| {
        if end < c {
            std::cmp::Ordering::Less
        } else if start > c {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(k) => tables.ranges[k].2,
        Err(_) => Class::Other,
    }
}

struct Tables {
    ascii: [Class; 128],
    /// Sorted, disjoint ranges of letters, digits and whitespace.
    ranges: Vec<(char, char, Class)>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut ranges: Vec<(char, char, Class)> = [
            (r"\p{L}", Class::Letter),
            (r"\p{N}", Class::Number),
            (r"\s", Class::Space),
        ]
        .into_iter()
        .flat_map(|(expr, class)| {
            unicode_class(expr)
                .into_iter()
                .map(move |(start, end)| (start, end, class))
        })
        .collect();
        ranges.sort_unstable_by_key(|r| r.0);
        let ascii = std::array::from_fn(|b| {
            let c = b as u8 as char;
            ranges
                .iter()
                .find(|&&(start, end, _)| start <= c && c <= end)
                .map_or(Class::Other, |r| r.2)
        });
        Tables { ascii, ranges }
    })
}

fn unicode_class(expr: &str) -> Vec<(char, char)> {
    use regex_syntax::hir::{Class as HirClass, HirKind};
    let hir = regex_syntax::parse(expr).expect("a valid class expression");
    let HirKind::Class(HirClass::Unicode(class)) = hir.kind() else {
        panic!("{expr} is not a Unicode class");
    };
    class
        .ranges()
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    // llama.cpp's expressions for the splits (llama-vocab.cpp).
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// What the tokenizer did before: each expression's matches, and the text between them,
    /// as pieces.
    fn with_regex(exprs: &[&str], text: &str) -> Vec<String> {
        let mut pieces = vec![text.to_string()];
        for expr in exprs {
            let re = regex(expr);
            let mut next = Vec::new();
            for p in &pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    let m = m.unwrap();
                    if m.start() > last {
                        next.push(p[last..m.start()].to_string());
                    }
                    next.push(m.as_str().to_string());
                    last = m.end();
                }
                if last < p.len() {
                    next.push(p[last..].to_string());
                }
            }
            pieces = next;
        }
        pieces.retain(|p| !p.is_empty());
        pieces
    }

    /// Compiled once per expression: compiling takes longer than a test case.
    fn regex(expr: &str) -> fancy_regex::Regex {
        static CACHE: OnceLock<std::sync::Mutex<HashMap<String, fancy_regex::Regex>>> =
            OnceLock::new();
        let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
        let re = cache
            .entry(expr.to_string())
            .or_insert_with(|| fancy_regex::Regex::new(expr).unwrap());
        re.clone()
    }

    fn check(text: &str) -> Result<(), TestCaseError> {
        let cases: [(&[Split], &[&str]); 4] = [
            (&[Split::Gpt2], &[GPT2]),
            (&[Split::Llama3 { max_digits: 3 }], &[LLAMA3]),
            (&[Split::Llama3 { max_digits: 1 }], &[QWEN2]),
            (&[Split::Digits, Split::Gpt2], &[r"\p{N}", GPT2]),
        ];
        for (splits, exprs) in cases {
            prop_assert_eq!(
                pieces(splits, text),
                with_regex(exprs, text),
                "{:?}",
                splits
            );
        }
        Ok(())
    }

    /// Characters at the edges of the expressions: contraction letters in both cases, ASCII
    /// and other whitespace (NBSP, NEL, ideographic space, vertical tab), line breaks, letters
    /// of several scripts and kinds (titlecase, modifier), digits (decimal, letter-like,
    /// other), combining marks and other non-letters.
    const ALPHABET: &[char] = &[
        ' ', ' ', '\t', '\n', '\r', '\u{b}', '\u{a0}', '\u{85}', '\u{3000}', '\'', '\'', 's', 'S',
        't', 'r', 'E', 'v', 'm', 'l', 'L', 'd', 'x', 'é', '中', 'ǅ', 'ʰ', '0', '7', '٣', 'Ⅷ', '½',
        '!', '.', '-', '\u{301}', '\u{200d}', '😀', '_',
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn splits_like_the_regexes(chars in prop::collection::vec(prop::sample::select(ALPHABET), 0..40)) {
            check(&chars.into_iter().collect::<String>())?;
        }

        #[test]
        fn splits_any_text_like_the_regexes(text in any::<String>()) {
            check(&text)?;
        }
    }

    #[test]
    fn long_runs_split_in_one_pass() {
        // A backtracking regex overflows its stack on these.
        let n = 2_000_000;
        let spaces = " ".repeat(n) + "x";
        assert_eq!(
            pieces(&[Split::Gpt2], &spaces),
            [&spaces[..n - 1], &spaces[n - 1..]]
        );
        let lines = "\n".repeat(n);
        assert_eq!(
            pieces(&[Split::Llama3 { max_digits: 3 }], &lines),
            [lines.as_str()]
        );
    }
}
