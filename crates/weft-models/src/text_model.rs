//! A text model as users see it: the network, its tokenizer and its chat template, all from
//! one GGUF file.

use std::path::Path;
use std::sync::Arc;

use crate::arch::Decoder;
use crate::chat_template::ChatTemplate;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::ModelError;

pub struct TextModel {
    pub file: Arc<GgufFile>,
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    /// `None` when the file carries no `tokenizer.chat_template` (base models).
    pub chat_template: Option<ChatTemplate>,
}

impl TextModel {
    pub fn load(path: &Path) -> Result<TextModel, ModelError> {
        let file = Arc::new(GgufFile::open(path)?);
        let decoder = Decoder::load(Arc::clone(&file))?;
        let tokenizer =
            Tokenizer::from_gguf(&file).map_err(|e| ModelError::invalid(&file, &e.to_string()))?;
        if tokenizer.vocab_size() != decoder.vocab_size() {
            return Err(ModelError::invalid(
                &file,
                &format!(
                    "tokenizer has {} tokens but the embedding has {} rows",
                    tokenizer.vocab_size(),
                    decoder.vocab_size()
                ),
            ));
        }
        let chat_template = match file.get_str("tokenizer.chat_template")? {
            Some(source) => {
                let text = |id: Option<u32>| {
                    id.map(|t| tokenizer.token_text(t).to_string())
                        .unwrap_or_default()
                };
                let template =
                    ChatTemplate::new(source, &text(tokenizer.bos()), &text(tokenizer.eos()))
                        .map_err(|e| ModelError::invalid(&file, &format!("chat template: {e}")))?;
                Some(template)
            }
            None => None,
        };
        Ok(TextModel {
            file,
            decoder,
            tokenizer,
            chat_template,
        })
    }

    /// The model's display name: `general.name`, else the file stem.
    pub fn name(&self) -> String {
        if let Ok(Some(name)) = self.file.get_str("general.name") {
            return name.to_string();
        }
        self.file
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}
