//! Tokenizers built from GGUF metadata: byte-level BPE (`gpt2` model) and SentencePiece
//! (`llama` model), with special-token splitting, as llama.cpp tokenizes.

mod bpe;
mod pretokenize;
mod specials;

use std::collections::{BinaryHeap, HashMap};

use crate::gguf::{GgufError, GgufFile};
use bpe::{BpeMerges, BpeScratch};
use pretokenize::Split;
use specials::{Part, SpecialMatcher};

#[derive(thiserror::Error, Debug)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tokenizer metadata '{0}' is missing")]
    Missing(&'static str),
    #[error("tokenizer model '{0}' is not supported (supported: gpt2, llama)")]
    UnsupportedModel(String),
    #[error("pre-tokenizer '{0}' is not supported (supported: default, gpt2, llama-bpe, llama3, smollm, qwen2)")]
    UnsupportedPre(String),
    #[error("tokenizer arrays disagree: {0}")]
    Inconsistent(String),
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

enum Model {
    /// Byte-level BPE: merges and the pre-tokenizer's splits, applied in sequence.
    Bpe {
        merges: BpeMerges,
        splits: Vec<Split>,
    },
    /// SentencePiece with scores and byte fallback.
    Spm {
        scores: Vec<f32>,
        add_space_prefix: bool,
        /// The `<0xXX>` token of each byte, for text no token covers.
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
    model: Model,
    /// Tokens matched in raw text before the model runs: all of them with `parse_special`,
    /// otherwise the user-defined ones only.
    specials: SpecialMatcher,
    user_specials: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

/// Token texts that end generation (llama.cpp's list in llama-vocab.cpp).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
];

/// The splits of each `tokenizer.ggml.pre` (llama.cpp's expressions, in llama-vocab.cpp).
fn pre_tokenizer(pre: &str) -> Result<Vec<Split>, TokenizerError> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => vec![Split::Gpt2],
        "llama-bpe" | "llama3" | "llama-v3" => vec![Split::Llama3 { max_digits: 3 }],
        "smollm" => vec![Split::Digits, Split::Gpt2],
        "qwen2" => vec![Split::Llama3 { max_digits: 1 }],
        other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
    })
}

/// End-of-generation tokens: EOS, EOT, and every token whose text llama.cpp treats as a turn
/// or text end, which it also makes a control token (so that its text is matched as special
/// only with parse_special).
fn end_of_generation(
    ends: [Option<u32>; 2],
    ids: &HashMap<String, u32>,
    types: &mut [i32],
) -> Vec<u32> {
    let mut eog: Vec<u32> = ends.into_iter().flatten().collect();
    for text in EOG_TEXTS {
        if let Some(&i) = ids.get(*text) {
            eog.push(i);
            types[i as usize] = TYPE_CONTROL;
        }
    }
    eog.sort_unstable();
    eog.dedup();
    eog
}

/// The splits of a `tokenizer.json` `pre_tokenizer` that wraps byte-level BPE: GPT-2's
/// `ByteLevel` with its own expression, SmolLM's `Digits` before it, or a `Split` by one of
/// the expressions llama.cpp knows (Llama 3's, Qwen2's) before a `ByteLevel` without one.
fn hf_pre_tokenizer(pre: &serde_json::Value) -> Result<Vec<Split>, TokenizerError> {
    let unsupported = || TokenizerError::UnsupportedPre(pre.to_string());
    let steps: Vec<&serde_json::Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .ok_or_else(unsupported)?
            .iter()
            .collect(),
        Some(_) => vec![pre],
        None if pre.is_null() => return Ok(vec![Split::Gpt2]),
        None => return Err(unsupported()),
    };
    let mut splits = Vec::new();
    for step in steps {
        match step["type"].as_str() {
            Some("ByteLevel") if step["use_regex"].as_bool() != Some(false) => {
                splits.push(Split::Gpt2)
            }
            Some("ByteLevel") => {}
            Some("Digits") if step["individual_digits"].as_bool() == Some(true) => {
                splits.push(Split::Digits)
            }
            Some("Split") => {
                let pattern = step["pattern"]["Regex"].as_str().ok_or_else(unsupported)?;
                if !pattern.contains(r"[^\r\n\p{L}\p{N}]?\p{L}+") {
                    return Err(unsupported());
                }
                let max_digits = if pattern.contains(r"\p{N}{1,3}") {
                    3
                } else if pattern.contains(r"|\p{N}|") {
                    1
                } else {
                    return Err(unsupported());
                };
                splits.push(Split::Llama3 { max_digits });
            }
            _ => return Err(unsupported()),
        }
    }
    Ok(splits)
}

/// A token given in `tokenizer_config.json` as its text or as `{"content": text}`.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    let v = &config[key];
    v.as_str()
        .or_else(|| v["content"].as_str())
        .map(str::to_string)
}

/// Matchers for the specials (`order`: ids, longest text first): all of them, and the
/// user-defined ones alone.
fn special_matchers(tokens: &[String], types: &[i32], order: &[u32]) -> [SpecialMatcher; 2] {
    let matcher = |user_only: bool| {
        SpecialMatcher::new(
            order
                .iter()
                .filter(|&&i| !user_only || types[i as usize] == TYPE_USER_DEFINED)
                .map(|&i| (i, tokens[i as usize].as_str())),
        )
    };
    [matcher(false), matcher(true)]
}

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let model_name = file
            .get_str("tokenizer.ggml.model")?
            .ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
        let tokens = file
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or(TokenizerError::Missing("tokenizer.ggml.tokens"))?
            .to_vec();
        let types = match file.get_i32_array("tokenizer.ggml.token_type")? {
            Some(t) => t.to_vec(),
            None => vec![TYPE_NORMAL; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(TokenizerError::Inconsistent(format!(
                "{} tokens, {} token types",
                tokens.len(),
                types.len()
            )));
        }
        let id = |key| -> Result<Option<u32>, TokenizerError> {
            Ok(file.get_u32(key)?.filter(|&i| (i as usize) < tokens.len()))
        };
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id")?,
            id("tokenizer.ggml.eos_token_id")?,
        );
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let model = match model_name {
            "gpt2" => {
                let merges = file
                    .get_str_array("tokenizer.ggml.merges")?
                    .ok_or(TokenizerError::Missing("tokenizer.ggml.merges"))?;
                let pre_name = file.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
                Model::Bpe {
                    merges: BpeMerges::new(
                        merges.iter().filter_map(|m| m.split_once(' ')),
                        &ids,
                        tokens.len(),
                    ),
                    splits: pre_tokenizer(pre_name)?,
                }
            }
            "llama" => {
                let scores = file
                    .get_f32_array("tokenizer.ggml.scores")?
                    .ok_or(TokenizerError::Missing("tokenizer.ggml.scores"))?
                    .to_vec();
                if scores.len() != tokens.len() {
                    return Err(TokenizerError::Inconsistent(format!(
                        "{} tokens, {} scores",
                        tokens.len(),
                        scores.len()
                    )));
                }
                let add_space_prefix = file
                    .get_bool("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true);
                Model::Spm {
                    scores,
                    add_space_prefix,
                    byte_tokens: Box::new(std::array::from_fn(|b| {
                        ids.get(&format!("<0x{b:02X}>")).copied()
                    })),
                }
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let is_spm = matches!(model, Model::Spm { .. });
        let add_bos = file
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(is_spm);
        let add_eos = file
            .get_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        let mut types = types;
        let eog = end_of_generation([eos, eot], &ids, &mut types);
        let mut order: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        let [specials, user_specials] = special_matchers(&tokens, &types, &order);
        Ok(Tokenizer {
            tokens,
            types,
            ids,
            model,
            specials,
            user_specials,
            bos,
            eos,
            eog,
            add_bos,
            add_eos,
        })
    }

    /// A byte-level BPE tokenizer from a Hugging Face `tokenizer.json` alone (as Whisper ships
    /// it). Added tokens marked special become control tokens; there is no BOS to add.
    pub fn from_hf_json(json: &str) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_hf_files(json, &serde_json::Value::Null)
    }

    /// A byte-level BPE tokenizer from a Hugging Face model directory's `tokenizer.json` and
    /// parsed `tokenizer_config.json` (`Null` when there is none): BOS and EOS by their text
    /// there, BOS added when `add_bos_token` says so or the post-processor starts with it.
    pub fn from_hf_files(
        json: &str,
        tokenizer_config: &serde_json::Value,
    ) -> Result<Tokenizer, TokenizerError> {
        let bad = |what: &str| TokenizerError::Inconsistent(format!("tokenizer.json: {what}"));
        let root: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
        let model = &root["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(TokenizerError::UnsupportedModel(
                model["type"].as_str().unwrap_or("none").to_string(),
            ));
        }
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("no model.vocab"))?;
        let mut entries: Vec<(u32, String, i32)> = Vec::with_capacity(vocab.len());
        for (text, id) in vocab {
            let id = id.as_u64().ok_or_else(|| bad("non-integer id"))?;
            entries.push((id as u32, text.clone(), TYPE_NORMAL));
        }
        for added in root["added_tokens"].as_array().into_iter().flatten() {
            let id = added["id"]
                .as_u64()
                .ok_or_else(|| bad("added token without id"))?;
            let text = added["content"]
                .as_str()
                .ok_or_else(|| bad("added token text"))?;
            let ty = if added["special"].as_bool().unwrap_or(false) {
                TYPE_CONTROL
            } else {
                TYPE_USER_DEFINED
            };
            entries.retain(|e| e.0 != id as u32);
            entries.push((id as u32, text.to_string(), ty));
        }
        let n = entries.iter().map(|e| e.0 as usize + 1).max().unwrap_or(0);
        if n > entries.len() + 4096 {
            return Err(bad("token ids are too sparse"));
        }
        let mut tokens = vec![String::new(); n];
        let mut types = vec![TYPE_UNKNOWN; n];
        for (id, text, ty) in entries {
            tokens[id as usize] = text;
            types[id as usize] = ty;
        }
        let merges = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| match m {
                serde_json::Value::String(s) => s.split_once(' '),
                serde_json::Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("malformed merge"))?;
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let token =
            |key: &str| config_token(tokenizer_config, key).and_then(|t| ids.get(&t).copied());
        let bos = token("bos_token");
        let eos = token("eos_token").or_else(|| ids.get("<|endoftext|>").copied());
        let add_bos = bos.is_some()
            && tokenizer_config["add_bos_token"]
                .as_bool()
                .unwrap_or_else(|| {
                    let first = &root["post_processor"]["single"][0]["SpecialToken"]["id"];
                    first
                        .as_str()
                        .is_some_and(|t| Some(t) == bos.map(|b| tokens[b as usize].as_str()))
                });
        let splits = hf_pre_tokenizer(&root["pre_tokenizer"])?;
        let eog = end_of_generation([eos, None], &ids, &mut types);
        let mut order: Vec<u32> = (0..n as u32)
            .filter(|&i| matches!(types[i as usize], TYPE_CONTROL | TYPE_USER_DEFINED))
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        let [specials, user_specials] = special_matchers(&tokens, &types, &order);
        let merges = BpeMerges::new(merges, &ids, n);
        Ok(Tokenizer {
            tokens,
            types,
            ids,
            model: Model::Bpe { merges, splits },
            specials,
            user_specials,
            bos,
            eos,
            eog,
            add_bos,
            add_eos: false,
        })
    }

    /// Extends the vocabulary to `n` ids with unused ones that encode nothing and decode to
    /// nothing, for an embedding rounded up beyond the tokenizer's tokens (as llama.cpp's
    /// converter pads such vocabularies).
    pub fn pad_vocab(&mut self, n: usize) {
        if n > self.tokens.len() {
            self.tokens.resize(n, String::new());
            self.types.resize(n, TYPE_UNKNOWN);
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    pub fn token_text(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map_or("", |s| s.as_str())
    }
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Token ids of `text`. `add_special` adds BOS/EOS where the model asks for them;
    /// `parse_special` turns control-token text into those tokens.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut first_text = true;
        let specials = if parse_special {
            &self.specials
        } else {
            &self.user_specials
        };
        for part in specials.partition(text) {
            match part {
                Part::Special(id) => out.push(id),
                Part::Text(t) => {
                    match &self.model {
                        Model::Bpe { merges, splits } => {
                            self.encode_bpe(t, merges, splits, &mut out)
                        }
                        Model::Spm {
                            scores,
                            add_space_prefix,
                            byte_tokens,
                        } => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if *add_space_prefix && first_text {
                                s.push(' ');
                            }
                            s.push_str(t);
                            let s = s.replace(' ', "\u{2581}");
                            self.encode_spm(&s, scores, byte_tokens, &mut out);
                        }
                    }
                    first_text = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    fn encode_bpe(&self, text: &str, merges: &BpeMerges, splits: &[Split], out: &mut Vec<u32>) {
        let mut mapped = String::new();
        let mut scratch = BpeScratch::default();
        for piece in pretokenize::pieces(splits, text) {
            mapped.clear();
            mapped.extend(piece.bytes().map(byte_to_char));
            // A piece that is a token as a whole is that token, without merges.
            match self.ids.get(&mapped) {
                Some(&id) => out.push(id),
                None => merges.encode_piece(piece.as_bytes(), &mut scratch, out),
            }
        }
    }

    fn encode_spm(
        &self,
        text: &str,
        scores: &[f32],
        byte_tokens: &[Option<u32>; 256],
        out: &mut Vec<u32>,
    ) {
        // Symbols as a linked list over the text's characters.
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let n = starts.len();
        if n == 0 {
            return;
        }
        let mut sym: Vec<(usize, usize)> = (0..n)
            .map(|i| {
                (
                    starts[i],
                    if i + 1 < n { starts[i + 1] } else { text.len() },
                )
            })
            .collect();
        let mut prev: Vec<isize> = (0..n as isize).map(|i| i - 1).collect();
        let mut next: Vec<isize> = (0..n as isize)
            .map(|i| if i + 1 < n as isize { i + 1 } else { -1 })
            .collect();
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Bigram>, sym: &[(usize, usize)], l: usize, r: usize| {
            let s = &text[sym[l].0..sym[r].1];
            if let Some(&id) = self.ids.get(s) {
                heap.push(Bigram {
                    score: scores[id as usize],
                    len: s.len() as u32,
                    left: l,
                });
            }
        };
        for i in 1..n {
            push(&mut heap, &sym, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            // Skip stale bigrams: the left symbol has merged into its neighbour, or the pair
            // it starts now spans other text (symbols only grow, so the same span means the
            // same pair).
            let (l, r) = (b.left, next[b.left]);
            if sym[l].1 == sym[l].0 || r < 0 || sym[r as usize].1 - sym[l].0 != b.len as usize {
                continue;
            }
            let r = r as usize;
            sym[l].1 = sym[r].1;
            sym[r] = (sym[r].0, sym[r].0);
            next[l] = next[r];
            if next[r] >= 0 {
                prev[next[r] as usize] = l as isize;
            }
            if prev[l] >= 0 {
                push(&mut heap, &sym, prev[l] as usize, l);
            }
            if next[l] >= 0 {
                push(&mut heap, &sym, l, next[l] as usize);
            }
        }
        let mut i: isize = 0;
        while i >= 0 {
            let (a, b) = sym[i as usize];
            let piece = &text[a..b];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| byte_tokens[b as usize])),
            }
            i = next[i as usize];
        }
    }

    /// The bytes of one token as llama.cpp's `llama_token_to_piece` renders them.
    pub fn token_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        let ty = self.types[id as usize];
        match ty {
            TYPE_CONTROL | TYPE_UNKNOWN if !special => return Vec::new(),
            TYPE_CONTROL | TYPE_UNKNOWN => return text.as_bytes().to_vec(),
            TYPE_USER_DEFINED => return text.as_bytes().to_vec(),
            _ => {}
        }
        match &self.model {
            Model::Bpe { .. } => text
                .chars()
                .map(|c| char_to_byte(c).unwrap_or(b'?'))
                .collect(),
            Model::Spm { .. } => {
                if ty == TYPE_BYTE {
                    if let Some(b) = text
                        .strip_prefix("<0x")
                        .and_then(|h| h.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        return vec![b];
                    }
                }
                text.replace('\u{2581}', " ").into_bytes()
            }
        }
    }

    /// Text of `ids` (lossy UTF-8).
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i, special))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A candidate merge of the symbol at `left` with the next one, highest score first, then
/// leftmost. Kept small: the heap of a long text is larger than the caches.
struct Bigram {
    score: f32,
    /// Bytes the pair spans (at most two tokens' texts).
    len: u32,
    left: usize,
}
impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// GPT-2's reversible map between bytes and printable characters: printable Latin-1 bytes
/// map to themselves, the others, in order, to U+0100 onwards.
fn byte_table() -> &'static ([char; 256], HashMap<char, u8>) {
    static TABLE: std::sync::OnceLock<([char; 256], HashMap<char, u8>)> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| {
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
        };
        let mut chars = ['\0'; 256];
        let mut next = 0x100u32;
        for b in 0..=255u8 {
            chars[b as usize] = if printable(b) {
                b as char
            } else {
                next += 1;
                char::from_u32(next - 1).expect("valid code point")
            };
        }
        let back = chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        (chars, back)
    })
}

fn byte_to_char(b: u8) -> char {
    byte_table().0[b as usize]
}

fn char_to_byte(c: char) -> Option<u8> {
    byte_table().1.get(&c).copied()
}
