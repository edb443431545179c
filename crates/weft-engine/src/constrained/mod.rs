//! Constrained decoding: a JSON grammar (any object, or compiled from a JSON schema) turned
//! into a token mask each step, so that the output is valid JSON whatever the model.

mod json;
mod schema;
mod vocab;

use std::sync::Arc;

pub use json::JsonState;
pub use schema::{JsonGrammar, SchemaError};
pub use vocab::VocabIndex;

use crate::generation::TokenConstraint;

/// A [`TokenConstraint`] that keeps the output inside a [`JsonGrammar`].
pub struct JsonConstraint {
    grammar: Arc<JsonGrammar>,
    vocab: Arc<VocabIndex>,
    state: JsonState,
    allowed: Vec<bool>,
}

impl JsonConstraint {
    pub fn new(grammar: Arc<JsonGrammar>, vocab: Arc<VocabIndex>) -> JsonConstraint {
        JsonConstraint {
            state: JsonState::new(&grammar),
            grammar,
            vocab,
            allowed: Vec::new(),
        }
    }
}

impl TokenConstraint for JsonConstraint {
    fn mask(&mut self, logits: &mut [f32]) {
        self.vocab
            .allowed(&self.grammar, &self.state, &mut self.allowed);
        for (l, &ok) in logits.iter_mut().zip(&self.allowed) {
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    fn accept(&mut self, token: u32) {
        let ok = self.state.feed_all(&self.grammar, self.vocab.bytes(token));
        debug_assert!(ok, "accepted a token the mask forbade");
    }

    fn is_complete(&self) -> bool {
        self.state.is_complete()
    }
}
