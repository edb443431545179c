//! A byte-at-a-time recognizer of JSON text that follows a [`JsonGrammar`]. Its state is a
//! small fixed-size value (`Copy`), so the vocabulary walk can keep one per prefix depth.

use super::schema::{
    JsonGrammar, Node, NodeId, ANY_ARRAY, ANY_LITERAL, ANY_NUMBER, ANY_STRING, FREE_OBJECT,
    NO_BRANCH,
};

/// Deepest nesting of objects, arrays and values in progress.
const MAX_DEPTH: usize = 12;
/// Whitespace between tokens is one space, or a newline and at most this many spaces or
/// tabs of indentation (llama.cpp's JSON grammar rule): small models otherwise pad forever.
const MAX_INDENT: u8 = 20;
/// `JsonState::whitespace` after a single space; values from `AFTER_NEWLINE` count the
/// indentation after a newline.
const AFTER_SPACE: u8 = 1;
const AFTER_NEWLINE: u8 = 2;
/// Most digits in a number (integer, fraction and exponent together).
const MAX_DIGITS: u8 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// After `{` / `[`.
    Open,
    /// After a key (objects): `:` comes next.
    AfterKey,
    /// After a member or element: `,` or the closing bracket.
    AfterValue,
    /// After `,`.
    AfterComma,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn is_final(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

#[derive(Clone, Copy, Debug)]
enum Frame {
    /// A value of `node` comes next (whitespace first is fine).
    Value { node: NodeId },
    /// Inside an object. `next`: index of the first declared property that may still come;
    /// `pending`: the property whose value follows the `:`.
    Object {
        node: NodeId,
        phase: Phase,
        next: u8,
        pending: u8,
    },
    /// Matching a declared key among `cands` (bit i = property i), `len` bytes in.
    Key { node: NodeId, cands: u64, len: u32 },
    Array {
        node: NodeId,
        phase: Phase,
        count: u16,
    },
    /// Inside a string, `len` characters in. `esc`: 0, or 1 after `\`, or 2..=5 while
    /// reading the 4 hex digits of `\u` (5 = none read yet).
    Str { node: NodeId, len: u32, esc: u8 },
    Num {
        integer: bool,
        phase: Num,
        digits: u8,
    },
    /// Matching literals of `node` (bit i = literal i), `len` bytes in.
    Lit { node: NodeId, cands: u64, len: u32 },
}

#[derive(Clone, Copy, Debug)]
pub struct JsonState {
    frames: [Frame; MAX_DEPTH],
    depth: u8,
    whitespace: u8,
}

impl JsonState {
    pub fn new(grammar: &JsonGrammar) -> JsonState {
        let mut frames = [Frame::Value { node: 0 }; MAX_DEPTH];
        frames[0] = Frame::Value { node: grammar.root };
        JsonState {
            frames,
            depth: 1,
            whitespace: 0,
        }
    }

    /// The root value is finished: nothing more may follow.
    pub fn is_complete(&self) -> bool {
        self.depth == 0
    }

    fn top(&mut self) -> &mut Frame {
        &mut self.frames[self.depth as usize - 1]
    }

    fn push(&mut self, f: Frame) -> bool {
        if self.depth as usize == MAX_DEPTH {
            return false;
        }
        self.frames[self.depth as usize] = f;
        self.depth += 1;
        true
    }

    fn pop(&mut self) {
        self.depth -= 1;
    }

    /// Consumes `bytes`; false (state then unspecified) if the grammar does not allow them.
    pub fn feed_all(&mut self, g: &JsonGrammar, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(g, b))
    }

    /// Consumes one byte; false if the grammar does not allow it here.
    pub fn feed(&mut self, g: &JsonGrammar, b: u8) -> bool {
        let is_ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');

        // A byte may end a number or literal and then belong to the enclosing frame: loop
        // until some frame consumes it.
        loop {
            if self.depth == 0 {
                return false;
            }
            let frame = *self.top();
            let whitespace_ok = matches!(
                frame,
                Frame::Value { .. } | Frame::Object { .. } | Frame::Array { .. }
            );
            if is_ws && whitespace_ok {
                self.whitespace = match (self.whitespace, b) {
                    (0, b' ') => AFTER_SPACE,
                    (0, b'\n') => AFTER_NEWLINE,
                    (n, b' ' | b'\t')
                        if (AFTER_NEWLINE..AFTER_NEWLINE + MAX_INDENT).contains(&n) =>
                    {
                        n + 1
                    }
                    _ => return false,
                };
                return true;
            }
            if !matches!(frame, Frame::Str { .. }) {
                self.whitespace = 0;
            }
            match self.step(g, frame, b) {
                Step::Consumed => return true,
                Step::Reject => return false,
                Step::Again => continue,
            }
        }
    }

    fn step(&mut self, g: &JsonGrammar, frame: Frame, b: u8) -> Step {
        match frame {
            Frame::Value { node } => self.start_value(g, node, b),
            Frame::Object {
                node,
                phase,
                next,
                pending,
            } => self.object(g, node, phase, next, pending, b),
            Frame::Key { node, cands, len } => {
                let Node::Object { props } = g.node(node) else {
                    unreachable!("keys belong to objects")
                };
                let mut left = 0u64;
                for (i, p) in props.iter().enumerate() {
                    if cands & (1 << i) != 0 && p.key.get(len as usize) == Some(&b) {
                        left |= 1 << i;
                    }
                }
                if left == 0 {
                    return Step::Reject;
                }
                let len = len + 1;
                // Keys end with their closing quote, so no key is a prefix of another.
                if let Some(i) = (0..props.len())
                    .find(|&i| left & (1 << i) != 0 && props[i].key.len() == len as usize)
                {
                    self.pop();
                    if let Frame::Object {
                        next,
                        pending,
                        phase,
                        ..
                    } = self.top()
                    {
                        *next = i as u8 + 1;
                        *pending = i as u8;
                        *phase = Phase::AfterKey;
                    }
                } else {
                    *self.top() = Frame::Key {
                        node,
                        cands: left,
                        len,
                    };
                }
                Step::Consumed
            }
            Frame::Array { node, phase, count } => {
                let Node::Array { items, min, max } = *g.node(node) else {
                    unreachable!("array frames belong to arrays")
                };
                match (phase, b) {
                    (Phase::Open | Phase::AfterValue, b']') if count >= min => {
                        self.pop();
                        Step::Consumed
                    }
                    (Phase::AfterValue, b',') if count < max => {
                        *self.top() = Frame::Array {
                            node,
                            phase: Phase::AfterComma,
                            count,
                        };
                        Step::Consumed
                    }
                    (Phase::Open, _) if count < max => self.element(node, items, count),
                    (Phase::AfterComma, _) => self.element(node, items, count),
                    _ => Step::Reject,
                }
            }
            Frame::Str { node, len, esc } => {
                let Node::String { min, max } = *g.node(node) else {
                    unreachable!("string frames belong to strings")
                };
                let next_esc = match (esc, b) {
                    (0, b'"') if len >= min => {
                        self.pop();
                        return Step::Consumed;
                    }
                    (0, b'"') => return Step::Reject,
                    (0, b'\\') => 1,
                    (0, c) if c < 0x20 => return Step::Reject,
                    (0, _) => 0,
                    (1, b'u') => 5,
                    (1, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 0,
                    (1, _) => return Step::Reject,
                    (e, c) if c.is_ascii_hexdigit() => {
                        if e == 2 {
                            0
                        } else {
                            e - 1
                        }
                    }
                    _ => return Step::Reject,
                };
                // Characters are counted at their first byte (UTF-8 continuation bytes are
                // 0b10xxxxxx); an escape counts once, at its backslash.
                let starts_char = esc == 0 && b & 0xC0 != 0x80;
                let len = len + u32::from(starts_char);
                if len > max {
                    return Step::Reject;
                }
                *self.top() = Frame::Str {
                    node,
                    len,
                    esc: next_esc,
                };
                Step::Consumed
            }
            Frame::Num {
                integer,
                phase,
                digits,
            } => {
                let digit = b.is_ascii_digit();
                let next = match (phase, b) {
                    (Num::Start, b'-') => Num::Minus,
                    (Num::Start | Num::Minus, b'0') => Num::Zero,
                    (Num::Start | Num::Minus, _) if digit => Num::Int,
                    (Num::Int, _) if digit => Num::Int,
                    (Num::Zero | Num::Int, b'.') if !integer => Num::Dot,
                    (Num::Dot | Num::Frac, _) if digit => Num::Frac,
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') if !integer => Num::E,
                    (Num::E, b'+' | b'-') => Num::ESign,
                    (Num::E | Num::ESign | Num::Exp, _) if digit => Num::Exp,
                    (p, _) if p.is_final() => {
                        self.pop();
                        return Step::Again;
                    }
                    _ => return Step::Reject,
                };
                let digits = digits + u8::from(digit);
                if digits > MAX_DIGITS {
                    return Step::Reject;
                }
                *self.top() = Frame::Num {
                    integer,
                    phase: next,
                    digits,
                };
                Step::Consumed
            }
            Frame::Lit { node, cands, len } => {
                let Node::Literals(lits) = g.node(node) else {
                    unreachable!("literal frames belong to literals")
                };
                let mut left = 0u64;
                for (i, l) in lits.iter().enumerate() {
                    if cands & (1 << i) != 0 && l.get(len as usize) == Some(&b) {
                        left |= 1 << i;
                    }
                }
                if left == 0 {
                    // A complete literal followed by a byte of the enclosing frame.
                    let complete = (0..lits.len())
                        .any(|i| cands & (1 << i) != 0 && lits[i].len() == len as usize);
                    if complete {
                        self.pop();
                        return Step::Again;
                    }
                    return Step::Reject;
                }
                let len = len + 1;
                let all_done =
                    (0..lits.len()).all(|i| left & (1 << i) == 0 || lits[i].len() == len as usize);
                if all_done {
                    self.pop();
                } else {
                    *self.top() = Frame::Lit {
                        node,
                        cands: left,
                        len,
                    };
                }
                Step::Consumed
            }
        }
    }

    fn element(&mut self, node: NodeId, items: NodeId, count: u16) -> Step {
        *self.top() = Frame::Array {
            node,
            phase: Phase::AfterValue,
            count: count + 1,
        };
        if self.push(Frame::Value { node: items }) {
            Step::Again
        } else {
            Step::Reject
        }
    }

    fn object(
        &mut self,
        g: &JsonGrammar,
        node: NodeId,
        phase: Phase,
        next: u8,
        pending: u8,
        b: u8,
    ) -> Step {
        let Node::Object { props } = g.node(node) else {
            unreachable!("object frames belong to objects")
        };
        let free = props.is_empty();
        let rest = &props[(next as usize).min(props.len())..];
        let may_close = rest.iter().all(|p| !p.required);
        // Keys that may come next: the following ones up to and including the first
        // required one.
        let candidates = || {
            let mut c = 0u64;
            for (i, p) in props.iter().enumerate().skip(next as usize) {
                c |= 1 << i;
                if p.required {
                    break;
                }
            }
            c
        };
        match (phase, b) {
            (Phase::Open | Phase::AfterValue, b'}') if free || may_close => {
                self.pop();
                Step::Consumed
            }
            (Phase::AfterValue, b',') if free || !rest.is_empty() => {
                *self.top() = Frame::Object {
                    node,
                    phase: Phase::AfterComma,
                    next,
                    pending,
                };
                Step::Consumed
            }
            (Phase::Open | Phase::AfterComma, b'"') if free => {
                *self.top() = Frame::Object {
                    node,
                    phase: Phase::AfterKey,
                    next,
                    pending,
                };
                self.push_or_reject(Frame::Str {
                    node: ANY_STRING,
                    len: 0,
                    esc: 0,
                })
            }
            (Phase::Open | Phase::AfterComma, b'"') if !rest.is_empty() => {
                self.push_or_reject(Frame::Key {
                    node,
                    cands: candidates(),
                    len: 1,
                })
            }
            (Phase::AfterKey, b':') => {
                let value = if free {
                    super::schema::ANY
                } else {
                    props[pending as usize].node
                };
                *self.top() = Frame::Object {
                    node,
                    phase: Phase::AfterValue,
                    next,
                    pending,
                };
                self.push_or_reject(Frame::Value { node: value })
            }
            _ => Step::Reject,
        }
    }

    fn push_or_reject(&mut self, f: Frame) -> Step {
        if self.push(f) {
            Step::Consumed
        } else {
            Step::Reject
        }
    }

    /// The first byte of a value: becomes the frame of the concrete kind.
    fn start_value(&mut self, g: &JsonGrammar, node: NodeId, b: u8) -> Step {
        let concrete = match g.node(node) {
            Node::Any => match b {
                b'{' => FREE_OBJECT,
                b'[' => ANY_ARRAY,
                b'"' => ANY_STRING,
                b'-' | b'0'..=b'9' => ANY_NUMBER,
                _ => ANY_LITERAL,
            },
            Node::Union(branch) => match branch[b as usize] {
                NO_BRANCH => return Step::Reject,
                alt => {
                    *self.top() = Frame::Value { node: alt };
                    return Step::Again;
                }
            },
            _ => node,
        };
        let frame = match (g.node(concrete), b) {
            (Node::Object { .. }, b'{') => Frame::Object {
                node: concrete,
                phase: Phase::Open,
                next: 0,
                pending: 0,
            },
            (Node::Array { .. }, b'[') => Frame::Array {
                node: concrete,
                phase: Phase::Open,
                count: 0,
            },
            (Node::String { .. }, b'"') => Frame::Str {
                node: concrete,
                len: 0,
                esc: 0,
            },
            (Node::Number { integer }, _) => {
                *self.top() = Frame::Num {
                    integer: *integer,
                    phase: Num::Start,
                    digits: 0,
                };
                return Step::Again;
            }
            (Node::Literals(lits), _) => {
                let all = if lits.len() == 64 {
                    u64::MAX
                } else {
                    (1u64 << lits.len()) - 1
                };
                *self.top() = Frame::Lit {
                    node: concrete,
                    cands: all,
                    len: 0,
                };
                return Step::Again;
            }
            _ => return Step::Reject,
        };
        *self.top() = frame;
        Step::Consumed
    }
}

enum Step {
    Consumed,
    Reject,
    /// The byte was not consumed; the (changed) state must look at it again.
    Again,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accepts(g: &JsonGrammar, text: &str) -> bool {
        let mut s = JsonState::new(g);
        s.feed_all(g, text.as_bytes()) && s.is_complete()
    }

    #[test]
    fn any_object_accepts_json_objects_only() {
        let g = JsonGrammar::any_object();
        assert!(accepts(
            &g,
            r#"{"a": [1, -2.5e3, "x\n\u00e9", true, null, {}], "b": {"c": false}}"#
        ));
        assert!(accepts(&g, "{ }"));
        assert!(!accepts(&g, "[1]"));
        assert!(!accepts(&g, r#"{"a": 01}"#));
        assert!(!accepts(&g, r#"{"a": tru}"#));
        assert!(!accepts(&g, r#"{"a" 1}"#));
        assert!(!accepts(&g, r#"{"a": 1,}"#));
        let mut s = JsonState::new(&g);
        assert!(s.feed_all(&g, b"{\"a\": 1"));
        assert!(!s.is_complete());
        assert!(s.feed_all(&g, b"}"));
        assert!(!s.feed(&g, b' '), "nothing after the end");
    }

    #[test]
    fn schema_properties_types_and_enums() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 5},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                "note": {"type": ["string", "null"]}
            },
            "required": ["name", "age"]
        });
        let g = JsonGrammar::from_schema(&schema).unwrap();
        assert!(accepts(&g, r#"{"name": "Ann", "age": 31}"#));
        assert!(accepts(
            &g,
            r#"{"name":"Ann","age":31,"tags":["a","b"],"note":null}"#
        ));
        assert!(accepts(&g, r#"{"name": "Ann", "age": 31, "note": "x"}"#));
        assert!(!accepts(&g, r#"{"age": 31, "name": "Ann"}"#), "order");
        assert!(!accepts(&g, r#"{"name": "Ann"}"#), "required");
        assert!(
            !accepts(&g, r#"{"name": "Annabel", "age": 3}"#),
            "maxLength"
        );
        assert!(!accepts(&g, r#"{"name": "A", "age": 3.5}"#), "integer");
        assert!(
            !accepts(&g, r#"{"name": "A", "age": 3, "tags": ["c"]}"#),
            "enum"
        );
        assert!(
            !accepts(&g, r#"{"name": "A", "age": 3, "tags": ["a","a","a"]}"#),
            "maxItems"
        );
        assert!(
            !accepts(&g, r#"{"name": "A", "age": 3, "x": 1}"#),
            "unknown key"
        );
    }

    #[test]
    fn refs_and_unsupported_keywords() {
        let schema = json!({
            "$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"anyOf": [{"type": "string"}, {"type": "number"}]}},
            "required": ["a", "b"]
        });
        let g = JsonGrammar::from_schema(&schema).unwrap();
        assert!(accepts(&g, r#"{"a": {"x": 1.5}, "b": "s"}"#));
        assert!(accepts(&g, r#"{"a": {"x": 1.5}, "b": -2}"#));
        assert!(JsonGrammar::from_schema(&json!({"type": "string", "pattern": "a+"})).is_err());
        assert!(JsonGrammar::from_schema(&json!({"type": "integer"})).is_err());
        let recursive = json!({"$defs": {"n": {"type": "object", "properties": {"k": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"});
        assert!(JsonGrammar::from_schema(&recursive).is_err());
    }

    /// Keys and literals longer than 255 bytes (their byte counters once were `u8`s, which
    /// overflowed: a panic with overflow checks, a wrong refusal without).
    #[test]
    fn keys_and_literals_longer_than_255_bytes() {
        let long = "k".repeat(300);
        let g = JsonGrammar::from_schema(&json!({"enum": [long.clone(), "x"]})).unwrap();
        assert!(accepts(&g, &format!("\"{long}\"")));
        assert!(!accepts(&g, &format!("\"{long}k\"")));
        let schema = json!({"properties": {long.clone(): {"type": "null"}}, "required": [long]});
        let g = JsonGrammar::from_schema(&schema).unwrap();
        assert!(accepts(&g, &format!("{{\"{long}\": null}}")));
        assert!(!accepts(&g, &format!("{{\"{long}k\": null}}")));
    }

    #[test]
    fn whitespace_is_a_space_or_a_newline_and_indentation() {
        let g = JsonGrammar::any_object();
        assert!(accepts(&g, "{\n  \"a\": [1, 2],\n\t\"b\": {}\n}"));
        assert!(!accepts(&g, "{\n\n\"a\": 1}"), "two newlines");
        assert!(!accepts(&g, "{  \"a\": 1}"), "two spaces without a newline");
        let mut s = JsonState::new(&g);
        assert!(s.feed_all(&g, b"{\n"));
        for _ in 0..MAX_INDENT {
            assert!(s.feed(&g, b' '));
        }
        assert!(!s.feed(&g, b' '));
    }
}
