//! The tokenizer (tokenizer.json through the `tokenizers` crate) and the ids
//! read from it: `<loc_0>`…`<loc_999>`, used to turn region inputs into
//! prompt tokens and generated tokens into coordinates.

use std::path::{Path, PathBuf};

use super::ModelError;

/// Location bins per image axis in Florence-2's vocabulary (`<loc_0>` …
/// `<loc_999>`): the one definition; post-processing and the
/// location-token kernel read it from here.
pub const LOCATION_BINS: u32 = 1000;

pub struct FlorenceTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Id of `<loc_i>` at index i.
    location_ids: Vec<i64>,
    /// transformers' `clean_up_tokenization_spaces` from tokenizer_config.json.
    clean_up_spaces: bool,
}

impl FlorenceTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::File {
                path,
                problem: "is missing; a Florence-2 model directory has tokenizer.json".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::File {
            path: path.clone(),
            problem: format!("is not a tokenizers JSON file: {e}"),
        })?;
        let mut location_ids = Vec::with_capacity(LOCATION_BINS as usize);
        for i in 0..LOCATION_BINS {
            let token = format!("<loc_{i}>");
            let id = inner.token_to_id(&token).ok_or_else(|| ModelError::File {
                path: path.clone(),
                problem: format!(
                    "has no token {token}; Florence-2 tokenizers define <loc_0> … <loc_999>"
                ),
            })?;
            location_ids.push(i64::from(id));
        }
        let clean_up_spaces = read_clean_up_flag(&dir.join("tokenizer_config.json"))?;
        Ok(Self {
            inner,
            path,
            location_ids,
            clean_up_spaces,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens including added ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// Prompt ids as the reference builds them: `tokenizer.encode(prompt)`
    /// with special tokens (BOS + prompt + EOS).
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<i64>, ModelError> {
        let enc = self
            .inner
            .encode(prompt, true)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode prompt {prompt:?}: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Decode generated ids keeping special tokens (the post-processor needs
    /// `<loc_N>`, `<sep>`, `<poly>` …), like `batch_decode(…,
    /// skip_special_tokens=False)`.
    pub fn decode_with_special_tokens(&self, ids: &[i64]) -> Result<String, ModelError> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| {
                u32::try_from(i)
                    .map_err(|_| ModelError::Tokenizer(format!("token id {i} out of range")))
            })
            .collect::<Result<_, _>>()?;
        let text = self
            .inner
            .decode(&ids, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode: {e}")))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Id of `<loc_bin>`.
    pub fn location_id(&self, bin: usize) -> Option<i64> {
        self.location_ids.get(bin).copied()
    }

    /// `(first id, contiguous)`: the GPU location-token kernel needs one
    /// contiguous range.
    pub fn location_range(&self) -> (i64, bool) {
        let first = self.location_ids[0];
        let contiguous = self
            .location_ids
            .iter()
            .enumerate()
            .all(|(i, &id)| id == first + i as i64);
        (first, contiguous)
    }
}

fn read_clean_up_flag(path: &Path) -> Result<bool, ModelError> {
    if !path.exists() {
        return Ok(false);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
        path: path.to_path_buf(),
        problem: format!("cannot be read: {e}"),
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::File {
        path: path.to_path_buf(),
        problem: format!("is not valid JSON: {e}"),
    })?;
    Ok(v.get("clean_up_tokenization_spaces")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false))
}

/// transformers' `clean_up_tokenization`.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("a car . it is n't red , ok ?"),
            "a car. it isn't red, ok?"
        );
    }
}
