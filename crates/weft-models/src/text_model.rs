//! A text model as users see it: the network, its tokenizer and its chat template, from one
//! GGUF file or from a Hugging Face model directory (`config.json`, safetensors,
//! `tokenizer.json`, `tokenizer_config.json` and its chat template).

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::arch::{hf, Decoder, DecoderConfig};
use crate::chat_template::ChatTemplate;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::weights::{SafetensorsFiles, WeightSource};
use crate::ModelError;

pub struct TextModel {
    pub weights: Arc<dyn WeightSource>,
    /// The GGUF file the model came from (`None` for a Hugging Face directory).
    pub gguf: Option<Arc<GgufFile>>,
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    /// `None` when the model has no chat template (base models).
    pub chat_template: Option<ChatTemplate>,
    name: String,
}

impl TextModel {
    /// Loads a `.gguf` file, or the Hugging Face model directory `path`.
    pub fn load(path: &Path) -> Result<TextModel, ModelError> {
        if path.is_dir() {
            TextModel::load_hf_dir(path)
        } else {
            TextModel::load_gguf(path)
        }
    }

    fn load_gguf(path: &Path) -> Result<TextModel, ModelError> {
        let file = Arc::new(GgufFile::open(path)?);
        let config = DecoderConfig::from_gguf(&file)?;
        let tokenizer =
            Tokenizer::from_gguf(&file).map_err(|e| ModelError::invalid(&file, &e.to_string()))?;
        let template = file.get_str("tokenizer.chat_template")?.map(str::to_string);
        let name = match file.get_str("general.name")? {
            Some(name) => name.to_string(),
            None => file_stem(path),
        };
        let weights: Arc<dyn WeightSource> = file.clone();
        TextModel::assemble(weights, Some(file), config, tokenizer, template, name)
    }

    fn load_hf_dir(dir: &Path) -> Result<TextModel, ModelError> {
        let invalid = |path: &Path, message: String| ModelError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let config_path = dir.join("config.json");
        let config_json = read_json(&config_path)?
            .ok_or_else(|| invalid(&config_path, "missing (not a model directory)".into()))?;
        let config = hf::decoder_config(&config_json, &config_path)?;
        let arch = config.arch;
        let weights = SafetensorsFiles::open_dir(dir)
            .and_then(|w| w.rename(|name| hf::gguf_name(arch, name)))
            .map_err(|e| invalid(dir, e.to_string()))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_json = std::fs::read_to_string(&tokenizer_path)
            .map_err(|e| invalid(&tokenizer_path, e.to_string()))?;
        let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let tokenizer = Tokenizer::from_hf_files(&tokenizer_json, &tokenizer_config)
            .map_err(|e| invalid(&tokenizer_path, e.to_string()))?;
        let template = hf_chat_template(dir, &tokenizer_config)?;
        let weights: Arc<dyn WeightSource> = Arc::new(weights);
        TextModel::assemble(weights, None, config, tokenizer, template, file_stem(dir))
    }

    fn assemble(
        weights: Arc<dyn WeightSource>,
        gguf: Option<Arc<GgufFile>>,
        config: DecoderConfig,
        tokenizer: Tokenizer,
        template: Option<String>,
        name: String,
    ) -> Result<TextModel, ModelError> {
        let path = weights.path().to_path_buf();
        let invalid = |message: String| ModelError::Invalid {
            path: path.clone(),
            message,
        };
        let decoder = Decoder::load(Arc::clone(&weights), config)?;
        // Hugging Face checkpoints round the embedding up beyond the tokenizer's tokens
        // (GGUF files carry the padding in the vocabulary).
        let mut tokenizer = tokenizer;
        if gguf.is_none() {
            tokenizer.pad_vocab(decoder.vocab_size());
        }
        if tokenizer.vocab_size() != decoder.vocab_size() {
            return Err(invalid(format!(
                "tokenizer has {} tokens but the embedding has {} rows",
                tokenizer.vocab_size(),
                decoder.vocab_size()
            )));
        }
        let chat_template = match template {
            Some(source) => {
                let text = |id: Option<u32>| {
                    id.map(|t| tokenizer.token_text(t).to_string())
                        .unwrap_or_default()
                };
                let template =
                    ChatTemplate::new(&source, &text(tokenizer.bos()), &text(tokenizer.eos()))
                        .map_err(|e| invalid(format!("chat template: {e}")))?;
                Some(template)
            }
            None => None,
        };
        Ok(TextModel {
            weights,
            gguf,
            decoder,
            tokenizer,
            chat_template,
            name,
        })
    }

    /// The model's display name: GGUF's `general.name`, else the file or directory name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A JSON file of the model directory, `None` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    let invalid = |message: String| ModelError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| invalid(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// The chat template as transformers finds it: `chat_template.jinja`, then
/// `chat_template.json`, then `tokenizer_config.json`'s `chat_template` (a string, or a list
/// of named templates of which `default` is used).
fn hf_chat_template(dir: &Path, tokenizer_config: &Value) -> Result<Option<String>, ModelError> {
    let jinja = dir.join("chat_template.jinja");
    if let Ok(text) = std::fs::read_to_string(&jinja) {
        return Ok(Some(text));
    }
    let from = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(named) => named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        }
    };
    if let Some(json) = read_json(&dir.join("chat_template.json"))? {
        return Ok(from(&json["chat_template"]));
    }
    Ok(from(&tokenizer_config["chat_template"]))
}
