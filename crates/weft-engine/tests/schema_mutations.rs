//! Robustness of constrained decoding's schema compiler and recognizer: deterministic
//! mutations of valid JSON schemas (structural: subtrees replaced, removed, duplicated, or
//! keywords added with odd values) must compile or be refused, never panic; every grammar
//! that compiles is then walked with bytes it accepts (a random walk guided by the
//! recognizer) and fed mutated instance texts. Text the recognizer accepts whole must be
//! JSON. The `json_schema` fuzz target (fuzz/) does the same with coverage guidance.

use serde_json::{json, Value};
use weft_engine::constrained::{JsonGrammar, JsonState};

use weft_test_support::Rng;

/// Valid schemas, each with a document it accepts.
fn seeds() -> Vec<(Value, &'static str)> {
    vec![
        (
            json!({
                "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": ["string", "null"]}}, "required": ["street"]}},
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 20},
                    "age": {"type": "integer"},
                    "tags": {"type": "array", "items": {"const": "x"}, "maxItems": 3},
                    "home": {"$ref": "#/$defs/address"},
                    "work": {"anyOf": [{"$ref": "#/$defs/address"}, {"type": "null"}]},
                    "ok": {"type": "boolean"}
                },
                "required": ["name", "home"]
            }),
            r#"{"name": "Ann", "age": 31, "tags": ["x"], "home": {"street": "Main", "zip": null}, "ok": true}"#,
        ),
        (
            json!({"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4}),
            "[1, -2.5e3, 0.25]",
        ),
        (
            json!({"enum": ["a", "ab", true, null, {"k": [1]}]}),
            r#""ab""#,
        ),
        (
            json!({"type": ["string", "null", "object"], "maxLength": 3}),
            r#""\u00e9\n""#,
        ),
        (
            json!({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]}),
            "[1,\n  2]",
        ),
        (
            json!({"allOf": [{"properties": {"a": {"const": 1.5}}}]}),
            r#"{"a": 1.5}"#,
        ),
        (
            json!({"definitions": {"s": {"type": "string"}}, "properties": {"x": {"$ref": "#/definitions/s"}}}),
            r#"{"x": "y"}"#,
        ),
        (
            json!({}),
            r#"{"free": [true, false, null, {"n": -0.0e+1}]}"#,
        ),
    ]
}

const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
];

/// Values that stress the compiler's bounds and the recognizer's counters.
fn interesting() -> Vec<Value> {
    let long = "k".repeat(300);
    let many: Vec<Value> = (0..64).map(|i| json!(format!("v{i}"))).collect();
    let props: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("p{i}"), json!({"type": "integer"})))
        .collect();
    vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(0.5),
        json!(""),
        json!(long.clone()),
        json!(true),
        json!(false),
        Value::Null,
        json!([]),
        json!({}),
        json!("string"),
        json!("object"),
        json!("array"),
        json!("integer"),
        json!("number"),
        json!("boolean"),
        json!("null"),
        json!(["string", "null", "integer"]),
        json!(["object", "array", "boolean"]),
        json!({"type": "string", "maxLength": 0}),
        json!({"type": "array", "minItems": 65535, "maxItems": 65535}),
        json!({"$ref": "#"}),
        json!({"$ref": "#/$defs/address"}),
        json!({"$ref": "#/properties/name"}),
        json!({"$ref": "http://example.com/x"}),
        json!({"enum": many}),
        json!({"enum": [1, 12, 123, -1]}),
        json!({"const": long.clone()}),
        json!({"const": {"deep": [[[[[[[[[[[[[1]]]]]]]]]]]]]}}),
        json!({"properties": {long.clone(): {"type": "null"}}, "required": [long]}),
        json!({"properties": props}),
        json!({"anyOf": []}),
        json!({"anyOf": [{"type": "string"}, {"type": "string"}]}),
        json!({"oneOf": [{"type": "integer"}, {"type": "boolean"}, {"type": "null"}]}),
        json!({"allOf": [{"type": "string"}, {"type": "string"}]}),
        json!({"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": true}}}}}}}}}}}}}),
    ]
}

/// Paths (object keys and array indices) to every value inside `v`.
fn paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                here.push(k.clone());
                paths(c, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                here.push(i.to_string());
                paths(c, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Object(m) => m.get_mut(k).expect("path"),
        Value::Array(a) => &mut a[k.parse::<usize>().expect("index")],
        _ => unreachable!("paths lead through containers"),
    })
}

fn mutate_schema(rng: &mut Rng, schema: &mut Value, extras: &[Value]) {
    let mut all = Vec::new();
    paths(schema, &mut Vec::new(), &mut all);
    let path = rng.pick(&all).clone();
    match rng.below(5) {
        0 => *at(schema, &path) = rng.pick(extras).clone(),
        1 => {
            // Remove the value (from its parent).
            if let Some((last, parent)) = path.split_last() {
                match at(schema, parent) {
                    Value::Object(m) => {
                        m.shift_remove(last);
                    }
                    Value::Array(a) => {
                        a.remove(last.parse::<usize>().expect("index"));
                    }
                    _ => {}
                }
            }
        }
        2 => {
            // Copy another subtree here.
            let from = rng.pick(&all).clone();
            let copy = at(schema, &from).clone();
            *at(schema, &path) = copy;
        }
        _ => {
            let key = *rng.pick(KEYWORDS);
            let value = rng.pick(extras).clone();
            if let Value::Object(m) = at(schema, &path) {
                m.insert(key.to_string(), value);
            }
        }
    }
}

fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let p = rng.below(b.len() + 1);
        match rng.below(4) {
            0 if p < b.len() => b[p] = rng.next_u64() as u8,
            1 if p < b.len() => {
                b.remove(p);
            }
            2 => b.insert(p, *rng.pick(ALPHABET)),
            _ => b.truncate(p),
        }
    }
}

/// Bytes a guided walk tries (JSON's punctuation, digits, literal letters, escapes, UTF-8).
const ALPHABET: &[u8] = b"{}[]\":,0123456789-.eE+ \n\t\rtruefalsnxyzkvpab\\/u\xc3\xa9\x01";

/// The bytes fed so far are accepted whole: then they must be JSON (when UTF-8 and without
/// `\u` escapes, which may be lone surrogates the recognizer does not reject).
fn check_complete(text: &[u8]) {
    if std::str::from_utf8(text).is_ok() && !text.windows(2).any(|w| w == b"\\u") {
        // serde_json refuses numbers beyond f64's range, which are JSON all the same.
        match serde_json::from_slice::<Value>(text) {
            Err(e) if !e.to_string().starts_with("number out of range") => panic!(
                "accepted {:?}, which is not JSON: {e}",
                String::from_utf8_lossy(text)
            ),
            _ => {}
        }
    }
}

fn feed(g: &JsonGrammar, text: &[u8]) {
    let mut s = JsonState::new(g);
    for (i, &b) in text.iter().enumerate() {
        if !s.feed(g, b) {
            return;
        }
        if s.is_complete() {
            check_complete(&text[..=i]);
            return;
        }
    }
}

/// A random walk through the grammar: tries bytes of [`ALPHABET`] or of the schema's own
/// text (so that its keys and literals come up) and keeps each one the recognizer accepts.
fn walk(rng: &mut Rng, g: &JsonGrammar, schema_text: &[u8]) -> usize {
    let mut s = JsonState::new(g);
    let mut text = Vec::new();
    for _ in 0..2000 {
        let b = if rng.below(2) == 0 {
            *rng.pick(ALPHABET)
        } else {
            *rng.pick(schema_text)
        };
        let mut t = s;
        if t.feed(g, b) {
            s = t;
            text.push(b);
            if s.is_complete() {
                check_complete(&text);
                return 1;
            }
        }
    }
    0
}

#[test]
fn schema_mutations_never_panic() {
    let seeds = seeds();
    for (schema, doc) in &seeds {
        let g = JsonGrammar::from_schema(schema).expect("seed schemas compile");
        let mut s = JsonState::new(&g);
        assert!(s.feed_all(&g, doc.as_bytes()) && s.is_complete(), "{doc}");
    }
    let extras = interesting();
    let mut rng = Rng(0x5eed_0f5c_4e3a_1100);
    let (mut compiled, mut refused, mut completed) = (0, 0, 0);
    for i in 0..10_000 {
        let (seed, doc) = &seeds[i % seeds.len()];
        let mut schema = seed.clone();
        for _ in 0..1 + rng.below(3) {
            mutate_schema(&mut rng, &mut schema, &extras);
        }
        let Ok(g) = JsonGrammar::from_schema(&schema) else {
            refused += 1;
            continue;
        };
        compiled += 1;
        feed(&g, doc.as_bytes());
        for _ in 0..3 {
            let mut text = doc.as_bytes().to_vec();
            mutate_bytes(&mut rng, &mut text);
            feed(&g, &text);
        }
        let schema_text = schema.to_string().into_bytes();
        for _ in 0..3 {
            completed += walk(&mut rng, &g, &schema_text);
        }
    }
    println!("schemas: {compiled} compiled, {refused} refused; {completed} walks completed");
    assert!(compiled > 1000 && refused > 1000 && completed > 1000);
}
