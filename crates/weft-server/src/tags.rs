//! Finding a tag in streamed text: text that might be the start of the tag is held back
//! until the next piece says whether it is.

/// Splits `pending` at the first `tag`: `Found(before, after)`, or `NotYet(emit)` where
/// `emit` is the leading part that cannot belong to a tag (the rest stays in `pending`).
pub enum Scan {
    Found(String, String),
    NotYet(String),
}

pub fn scan(pending: &mut String, tag: &str) -> Scan {
    if let Some(at) = pending.find(tag) {
        let after = pending.split_off(at + tag.len());
        pending.truncate(at);
        return Scan::Found(std::mem::take(pending), after);
    }
    let keep = partial_suffix(pending, tag);
    let rest = pending.split_off(pending.len() - keep);
    Scan::NotYet(std::mem::replace(pending, rest))
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_possible_tag_start() {
        let mut p = String::from("hello <thi");
        match scan(&mut p, "<think>") {
            Scan::NotYet(e) => assert_eq!(e, "hello "),
            Scan::Found(..) => panic!(),
        }
        assert_eq!(p, "<thi");
        p.push_str("nk>rest");
        match scan(&mut p, "<think>") {
            Scan::Found(b, a) => assert_eq!((b.as_str(), a.as_str()), ("", "rest")),
            Scan::NotYet(_) => panic!(),
        }
        let mut q = String::from("a < b é");
        assert!(matches!(scan(&mut q, "<think>"), Scan::NotYet(e) if e == "a < b é"));
    }
}
