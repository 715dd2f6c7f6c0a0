//! Settings read from the model directory's JSON files: the token ids and
//! generation defaults (generation_config.json, config.json). Nothing here
//! has a built-in default for a token id: a missing id is an error naming
//! the file and key.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{ModelError, Task};

/// Generation settings as the reference reads them. Field names follow
/// transformers' `GenerationConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    pub decoder_start_token_id: i64,
    pub forced_bos_token_id: Option<i64>,
    pub forced_eos_token_id: Option<i64>,
    pub no_repeat_ngram_size: usize,
    pub num_beams: usize,
    pub early_stopping: EarlyStopping,
    pub length_penalty: f32,
    pub max_length: Option<usize>,
}

/// transformers' `early_stopping`: `true`, `false` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    True,
    False,
    Never,
}

/// The parts of config.json (transformers' `Florence2Config`) the runtime
/// checks against the graphs.
#[derive(Debug, Clone, PartialEq)]
pub struct Florence2Config {
    pub model_type: String,
    /// Size of the language model's output layer (logits width).
    pub vocab_size: usize,
    pub d_model: Option<usize>,
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
        path: path.to_path_buf(),
        problem: format!("cannot be read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::File {
        path: path.to_path_buf(),
        problem: format!("is not valid JSON: {e}"),
    })
}

/// Looks a key up in several JSON documents in order of precedence.
struct Layers<'a> {
    layers: Vec<(&'a Value, PathBuf, &'static str)>,
}

impl<'a> Layers<'a> {
    fn find(&self, key: &str) -> Option<(&'a Value, &PathBuf, &'static str)> {
        self.layers.iter().find_map(|(doc, path, prefix)| {
            doc.get(key)
                .filter(|v| !v.is_null())
                .map(|v| (v, path, *prefix))
        })
    }

    fn where_(&self, key: &str) -> String {
        self.layers
            .iter()
            .map(|(_, p, prefix)| format!("{}:{prefix}{key}", p.display()))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    fn id(&self, key: &str) -> Result<Option<i64>, ModelError> {
        match self.find(key) {
            None => Ok(None),
            Some((v, path, prefix)) => match v {
                Value::Number(n) if n.as_i64().is_some_and(|i| i >= 0) => Ok(n.as_i64()),
                // A list of ids (several EOS tokens) is legal in
                // transformers; Florence-2 uses one. Take the first and
                // say so if there are more.
                Value::Array(a) if a.len() == 1 => Ok(a[0].as_i64()),
                _ => Err(ModelError::Key {
                    path: path.clone(),
                    key: format!("{prefix}{key}"),
                    problem: format!("is {v}; expected one non-negative token id"),
                }),
            },
        }
    }

    fn required_id(&self, key: &str) -> Result<i64, ModelError> {
        self.id(key)?.ok_or_else(|| ModelError::MissingKey {
            key: key.to_string(),
            looked_in: self.where_(key),
        })
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        match self.find(key) {
            None => Ok(default),
            Some((v, path, prefix)) => {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| ModelError::Key {
                        path: path.clone(),
                        key: format!("{prefix}{key}"),
                        problem: format!("is {v}; expected a non-negative integer"),
                    })
            }
        }
    }
}

impl GenerationConfig {
    /// generation_config.json wins over config.json's top level, which wins
    /// over config.json's `text_config` (where Florence-2 keeps the language
    /// model's defaults).
    pub fn from_files(generation_config: &Path, config: &Path) -> Result<Self, ModelError> {
        let gen = if generation_config.exists() {
            read_json(generation_config)?
        } else {
            Value::Null
        };
        let cfg = read_json(config)?;
        let text = cfg.get("text_config").cloned().unwrap_or(Value::Null);
        let layers = Layers {
            layers: vec![
                (&gen, generation_config.to_path_buf(), ""),
                (&cfg, config.to_path_buf(), ""),
                (&text, config.to_path_buf(), "text_config."),
            ],
        };
        let early_stopping = match layers.find("early_stopping") {
            None | Some((Value::Bool(false), _, _)) => EarlyStopping::False,
            Some((Value::Bool(true), _, _)) => EarlyStopping::True,
            Some((Value::String(s), _, _)) if s == "never" => EarlyStopping::Never,
            Some((v, path, prefix)) => {
                return Err(ModelError::Key {
                    path: path.clone(),
                    key: format!("{prefix}early_stopping"),
                    problem: format!("is {v}; allowed: true, false, \"never\""),
                })
            }
        };
        let length_penalty = match layers.find("length_penalty") {
            None => 1.0,
            Some((v, path, prefix)) => v.as_f64().ok_or_else(|| ModelError::Key {
                path: path.clone(),
                key: format!("{prefix}length_penalty"),
                problem: format!("is {v}; expected a number"),
            })? as f32,
        };
        let max_length = match layers.find("max_length") {
            None => None,
            Some(_) => Some(layers.usize_or("max_length", 20)?),
        };
        let num_beams = layers.usize_or("num_beams", 1)?.max(1);
        Ok(Self {
            bos_token_id: layers.required_id("bos_token_id")?,
            eos_token_id: layers.required_id("eos_token_id")?,
            pad_token_id: layers.required_id("pad_token_id")?,
            decoder_start_token_id: layers.required_id("decoder_start_token_id")?,
            forced_bos_token_id: layers.id("forced_bos_token_id")?,
            forced_eos_token_id: layers.id("forced_eos_token_id")?,
            no_repeat_ngram_size: layers.usize_or("no_repeat_ngram_size", 0)?,
            num_beams,
            early_stopping,
            length_penalty,
            max_length,
        })
    }
}

impl Florence2Config {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let cfg = read_json(path)?;
        let text = cfg.get("text_config").cloned().unwrap_or(Value::Null);
        let model_type = cfg
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !model_type.starts_with("florence") {
            return Err(ModelError::Key {
                path: path.to_path_buf(),
                key: "model_type".into(),
                problem: format!(
                    "is {model_type:?}; expected \"florence2\" (a Florence-2 model directory)"
                ),
            });
        }
        let vocab_size = text
            .get("vocab_size")
            .or_else(|| cfg.get("vocab_size"))
            .and_then(Value::as_u64)
            .ok_or_else(|| ModelError::MissingKey {
                key: "vocab_size".into(),
                looked_in: format!(
                    "{0}:text_config.vocab_size or {0}:vocab_size",
                    path.display()
                ),
            })? as usize;
        let d_model = text
            .get("d_model")
            .and_then(Value::as_u64)
            .map(|d| d as usize);
        Ok(Self {
            model_type,
            vocab_size,
            d_model,
        })
    }
}

/// How long a prompt may be: the encoder reads the image tokens followed
/// by the prompt's, and both share the language model's position
/// embeddings, so `image_tokens + prompt tokens ≤ max_positions`. A longer
/// sequence indexes past the embedding table and ONNX Runtime fails the
/// whole batch (an out-of-bounds Gather), so prompts are checked against
/// this before they are batched, and `validate` checks configured prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceLimit {
    /// Tokens the vision encoder produces per image
    /// (preprocessor_config.json `image_seq_length`, 577 for Florence-2).
    pub image_tokens: usize,
    /// config.json `text_config.max_position_embeddings` (1024 for
    /// Florence-2).
    pub max_positions: usize,
}

impl SequenceLimit {
    /// Reads the limit from a model directory: `None` when config.json
    /// declares no `max_position_embeddings` (nothing to check against) or
    /// preprocessor_config.json no `image_seq_length`.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, ModelError> {
        let config_path = dir.join("config.json");
        let cfg = read_json(&config_path)?;
        let max_positions = match cfg
            .get("text_config")
            .and_then(|t| t.get("max_position_embeddings"))
            .map(|v| (v, "text_config.max_position_embeddings"))
            .or_else(|| {
                cfg.get("max_position_embeddings")
                    .map(|v| (v, "max_position_embeddings"))
            }) {
            None => return Ok(None),
            Some((v, key)) => positive(v, &config_path, key)?,
        };
        let pre_path = dir.join("preprocessor_config.json");
        if !pre_path.is_file() {
            return Ok(None);
        }
        let pre = read_json(&pre_path)?;
        let image_tokens = match pre.get("image_seq_length") {
            None => return Ok(None),
            Some(v) => positive(v, &pre_path, "image_seq_length")?,
        };
        Ok(Some(Self {
            image_tokens,
            max_positions,
        }))
    }

    /// The longest prompt, BOS and EOS included, that fits.
    pub fn max_prompt_tokens(&self) -> usize {
        self.max_positions.saturating_sub(self.image_tokens)
    }

    /// What is allowed, as error messages say it.
    pub fn allowed(&self) -> String {
        format!(
            "at most {} tokens with this model (image tokens {} + prompt ≤ \
             max_position_embeddings {})",
            self.max_prompt_tokens(),
            self.image_tokens,
            self.max_positions
        )
    }

    /// A prompt of `tokens` tokens (BOS and EOS included) for `task`.
    pub fn check(&self, task: Task, tokens: usize) -> Result<(), ModelError> {
        if tokens > self.max_prompt_tokens() {
            return Err(ModelError::PromptTooLong {
                task,
                tokens,
                limit: *self,
            });
        }
        Ok(())
    }
}

fn positive(v: &Value, path: &Path, key: &str) -> Result<usize, ModelError> {
    v.as_u64()
        .filter(|&n| n > 0)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ModelError::Key {
            path: path.to_path_buf(),
            key: key.into(),
            problem: format!("is {v}; expected a positive integer"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn generation_config_takes_precedence_over_text_config() {
        let d = tempfile::tempdir().unwrap();
        let g = write(
            d.path(),
            "generation_config.json",
            r#"{"bos_token_id":0,"eos_token_id":2,"pad_token_id":1,"decoder_start_token_id":2,
                "forced_bos_token_id":0,"forced_eos_token_id":2,"no_repeat_ngram_size":3,"num_beams":3}"#,
        );
        let c = write(
            d.path(),
            "config.json",
            r#"{"model_type":"florence2","text_config":{"vocab_size":99,"num_beams":5,"early_stopping":true}}"#,
        );
        let gc = GenerationConfig::from_files(&g, &c).unwrap();
        assert_eq!(gc.num_beams, 3);
        assert_eq!(gc.early_stopping, EarlyStopping::True);
        assert_eq!(gc.forced_bos_token_id, Some(0));
        assert_eq!(gc.no_repeat_ngram_size, 3);
        assert_eq!(gc.length_penalty, 1.0);
    }

    #[test]
    fn a_missing_token_id_names_every_place_looked() {
        let d = tempfile::tempdir().unwrap();
        let g = write(
            d.path(),
            "generation_config.json",
            r#"{"bos_token_id":0,"eos_token_id":2,"pad_token_id":1}"#,
        );
        let c = write(d.path(), "config.json", r#"{"model_type":"florence2"}"#);
        let e = GenerationConfig::from_files(&g, &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("decoder_start_token_id"), "{e}");
        assert!(
            e.contains("generation_config.json")
                && e.contains("text_config.decoder_start_token_id"),
            "{e}"
        );
    }

    #[test]
    fn the_sequence_limit_is_the_positions_left_after_the_image_tokens() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "config.json",
            r#"{"model_type":"florence2","text_config":{"max_position_embeddings":1024}}"#,
        );
        // No preprocessor_config.json: nothing to check against.
        assert_eq!(SequenceLimit::from_dir(d.path()).unwrap(), None);
        write(
            d.path(),
            "preprocessor_config.json",
            r#"{"image_seq_length":577}"#,
        );
        let limit = SequenceLimit::from_dir(d.path()).unwrap().unwrap();
        assert_eq!(limit.max_prompt_tokens(), 447);
        assert!(limit.check(Task::OpenVocabularyDetection, 447).is_ok());
        let e = limit
            .check(Task::OpenVocabularyDetection, 448)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("<OPEN_VOCABULARY_DETECTION>")
                && e.contains("448 tokens")
                && e.contains("at most 447")
                && e.contains("image tokens 577")
                && e.contains("max_position_embeddings 1024"),
            "{e}"
        );
        write(
            d.path(),
            "preprocessor_config.json",
            r#"{"image_seq_length":"many"}"#,
        );
        let e = SequenceLimit::from_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("image_seq_length") && e.contains("\"many\""),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_are_reported_with_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let g = write(
            d.path(),
            "generation_config.json",
            r#"{"bos_token_id":"zero","eos_token_id":2,"pad_token_id":1,"decoder_start_token_id":2}"#,
        );
        let c = write(d.path(), "config.json", r#"{"model_type":"florence2"}"#);
        let e = GenerationConfig::from_files(&g, &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bos_token_id") && e.contains("\"zero\""), "{e}");
        let c2 = write(d.path(), "config2.json", r#"{"model_type":"bert"}"#);
        let e = Florence2Config::from_file(&c2).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("florence2"), "{e}");
    }
}
