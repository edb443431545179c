//! The CTranslate2 loader: `model.bin` (any float type) with the `config.json` and
//! `tokenizer.json` that CTranslate2's Whisper converter writes beside it.

use std::path::Path;

use weft_models::tokenizer::Tokenizer;

use crate::ct2::Ct2Model;
use crate::error::ModelError;
use crate::model::{read_text, special_tokens, Whisper};

pub fn load(dir: &Path) -> Result<Whisper, ModelError> {
    let bin = dir.join("model.bin");
    let model = Ct2Model::open(&bin)?;
    if model.spec != "WhisperSpec" {
        return Err(ModelError::Config(format!(
            "{} holds a {}, not a Whisper model",
            bin.display(),
            model.spec
        )));
    }
    let n_heads = model.scalar_int("encoder/num_heads")?;
    let config: serde_json::Value = serde_json::from_str(&read_text(&dir.join("config.json"))?)
        .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
    let ids = |key: &str| -> Vec<u32> {
        config[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64().map(|i| i as u32))
            .collect()
    };
    let tokenizer = Tokenizer::from_hf_json(&read_text(&dir.join("tokenizer.json"))?)?;
    let tokens = special_tokens(&tokenizer, ids("suppress_ids"), ids("suppress_ids_begin"))?;
    Whisper::build(
        &model,
        usize::try_from(n_heads).unwrap_or(0),
        tokenizer,
        tokens,
        bin,
    )
}
