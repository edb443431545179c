//! Compiles a JSON schema from the start of the input (the first JSON value; the input must
//! start with one) and, when it compiles, runs the grammar's recognizer over the bytes that
//! follow. Neither may panic or hang. Text the recognizer accepts whole must be JSON that
//! serde_json reads (when it is UTF-8 and has no `\u` escape, which the recognizer does not
//! check for surrogate pairs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft_engine::constrained::{JsonGrammar, JsonState};

fuzz_target!(|data: &[u8]| {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let Some(Ok(schema)) = values.next() else {
        return;
    };
    let rest = &data[values.byte_offset()..];
    let Ok(grammar) = JsonGrammar::from_schema(&schema) else {
        return;
    };
    let mut state = JsonState::new(&grammar);
    let mut accepted = 0;
    for &b in rest {
        // A copy fed one byte must agree with feed_all over the same byte.
        let mut copy = state;
        let one = copy.feed_all(&grammar, &[b]);
        if !state.feed(&grammar, b) {
            assert!(!one);
            break;
        }
        assert!(one);
        accepted += 1;
        if state.is_complete() {
            break;
        }
    }
    if state.is_complete() {
        let text = &rest[..accepted];
        if std::str::from_utf8(text).is_ok() && !text.windows(2).any(|w| w == b"\\u") {
            // serde_json refuses numbers beyond f64's range, which are JSON all the same.
            match serde_json::from_slice::<Value>(text) {
                Err(e) if !e.to_string().starts_with("number out of range") => panic!(
                    "the recognizer accepted {:?}, which is not JSON: {e}",
                    String::from_utf8_lossy(text)
                ),
                _ => {}
            }
        }
    }
});
