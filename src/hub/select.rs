//! Which files of a repository the runtime opens for one precision variant
//! and decoder layout (DESIGN.md §3), decided from the Hub's file list
//! before anything is downloaded.

use serde::Deserialize;

use super::HubError;
use crate::florence2::{DecoderLayout, Variant};

/// The JSON files every model directory needs (config, generation,
/// preprocessing, tokenizer, tokenizer options).
pub const JSON_FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// What to take: the graphs' precision variant and decoder layout, as in
/// `[model] precision` and `decoder`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub variant: Variant,
    pub layout: DecoderLayout,
}

impl Selection {
    pub fn layout_name(&self) -> &'static str {
        match self.layout {
            DecoderLayout::Split => "split",
            DecoderLayout::Merged => "merged",
        }
    }

    /// The graph stems this layout opens.
    pub fn stems(&self) -> &'static [&'static str] {
        match self.layout {
            DecoderLayout::Split => &[
                "vision_encoder",
                "embed_tokens",
                "encoder_model",
                "decoder_model",
                "decoder_with_past_model",
            ],
            DecoderLayout::Merged => &[
                "vision_encoder",
                "embed_tokens",
                "encoder_model",
                "decoder_model_merged",
            ],
        }
    }
}

/// One file of the repository as the Hub lists it (`?blobs=true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    /// The LFS object's SHA-256 (large files); `None` for files kept in git.
    pub sha256: Option<String>,
    /// The git blob id (`blobId`): the cache's name for a file kept in git.
    pub blob_id: Option<String>,
}

impl RemoteFile {
    /// What the cache names this file's blob after (the ETag hf-hub
    /// reads): the SHA-256 of an LFS file, the git blob id of the others.
    pub fn etag(&self) -> Option<&str> {
        self.sha256.as_deref().or(self.blob_id.as_deref())
    }
}

/// The Hub's answer for one revision: its commit and files.
#[derive(Clone, Debug)]
pub struct RemoteListing {
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

#[derive(Deserialize)]
struct InfoJson {
    sha: String,
    siblings: Vec<SiblingJson>,
}

#[derive(Deserialize)]
struct SiblingJson {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<LfsJson>,
}

#[derive(Deserialize)]
struct LfsJson {
    sha256: String,
    size: u64,
}

impl RemoteListing {
    /// Parses `GET /api/models/{repo}/revision/{rev}?blobs=true`.
    pub fn parse(repo: &str, body: &str) -> Result<RemoteListing, HubError> {
        let bad = |detail: String| HubError::BadAnswer {
            repo: repo.to_string(),
            what: "the model's file list".into(),
            detail,
        };
        let info: InfoJson = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
        if !super::is_commit(&info.sha) {
            return Err(bad(format!("{:?} is not a commit id", info.sha)));
        }
        let mut files = Vec::with_capacity(info.siblings.len());
        for s in info.siblings {
            let (size, sha256) = match s.lfs {
                Some(lfs) => {
                    let sha = lfs.sha256.to_ascii_lowercase();
                    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad(format!(
                            "{}: {:?} is not a SHA-256",
                            s.rfilename, lfs.sha256
                        )));
                    }
                    (lfs.size, Some(sha))
                }
                None => match s.size {
                    Some(size) => (size, None),
                    None => {
                        return Err(bad(format!(
                            "{} has no size (was the list asked for with blobs=true?)",
                            s.rfilename
                        )))
                    }
                },
            };
            files.push(RemoteFile {
                path: s.rfilename,
                size,
                sha256,
                blob_id: s.blob_id,
            });
        }
        Ok(RemoteListing {
            commit: info.sha,
            files,
        })
    }

    fn get(&self, path: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The precision variants whose vision encoder the repository has.
    pub fn variants(&self) -> Vec<&'static str> {
        Variant::ALLOWED
            .iter()
            .copied()
            .filter(|v| {
                let sfx = if *v == "fp32" {
                    String::new()
                } else {
                    format!("_{v}")
                };
                self.get(&format!("onnx/vision_encoder{sfx}.onnx"))
                    .is_some()
            })
            .collect()
    }
}

/// The graph file for `stem` in `variant`, as the runtime looks for it
/// (`GraphFiles::resolve`): `onnx/{stem}{_variant}.onnx`, and for
/// embed_tokens the FP32 file when the variant has none.
pub fn graph_path(stem: &str, variant: &Variant) -> String {
    if variant.name() == "fp32" {
        format!("onnx/{stem}.onnx")
    } else {
        format!("onnx/{stem}_{}.onnx", variant.name())
    }
}

/// Exactly the files `run` opens for `selection`: the JSON files and the
/// graphs, each graph with its external-data files (`….onnx_data*`, used by
/// the large models). Every missing file is an error naming the variants
/// the repository does have.
pub fn select(
    listing: &RemoteListing,
    repo: &str,
    revision: &str,
    selection: &Selection,
) -> Result<Vec<RemoteFile>, HubError> {
    let missing = |file: &str, layout_note: bool| HubError::MissingFile {
        at: format!("{repo}@{revision}"),
        file: file.to_string(),
        selection: format!(
            "variant {}, decoder {}",
            selection.variant.name(),
            selection.layout_name()
        ),
        layout_note,
        available: {
            let v = listing.variants();
            if v.is_empty() {
                "none (no onnx/vision_encoder*.onnx: is this an onnx-community Florence-2 repository?)".into()
            } else {
                v.join(", ")
            }
        },
    };
    let mut out = Vec::new();
    for name in JSON_FILES {
        out.push(
            listing
                .get(name)
                .ok_or_else(|| missing(name, false))?
                .clone(),
        );
    }
    for stem in selection.stems() {
        let wanted = graph_path(stem, &selection.variant);
        let graph = match listing.get(&wanted) {
            Some(f) => f,
            None if *stem == "embed_tokens" => listing
                .get(&graph_path(stem, &Variant::fp32()))
                .ok_or_else(|| missing(&wanted, false))?,
            None => {
                // A split layout asked of a repository that ships only the
                // merged decoder (or the other way round) is worth saying.
                let other = match selection.layout {
                    DecoderLayout::Split => "decoder_model_merged",
                    DecoderLayout::Merged => "decoder_model",
                };
                let note = listing
                    .get(&graph_path(other, &selection.variant))
                    .is_some();
                return Err(missing(&wanted, note));
            }
        };
        out.push(graph.clone());
        let data = format!("{}_data", graph.path);
        out.extend(
            listing
                .files
                .iter()
                .filter(|f| f.path == data || f.path.starts_with(&format!("{data}_")))
                .cloned(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(paths: &[&str]) -> RemoteListing {
        RemoteListing {
            commit: "c".repeat(40),
            files: paths
                .iter()
                .map(|p| RemoteFile {
                    path: p.to_string(),
                    size: 1,
                    sha256: p.ends_with(".onnx").then(|| "0".repeat(64)),
                    blob_id: None,
                })
                .collect(),
        }
    }

    fn onnx_community() -> RemoteListing {
        let mut paths: Vec<String> = JSON_FILES.iter().map(|s| s.to_string()).collect();
        paths.push("special_tokens_map.json".into());
        paths.push("README.md".into());
        for v in ["", "_fp16", "_q4", "_quantized"] {
            for stem in [
                "vision_encoder",
                "encoder_model",
                "decoder_model",
                "decoder_with_past_model",
                "decoder_model_merged",
            ] {
                paths.push(format!("onnx/{stem}{v}.onnx"));
            }
        }
        paths.push("onnx/embed_tokens.onnx".into());
        paths.push("onnx/embed_tokens_fp16.onnx".into());
        let refs: Vec<&str> = paths.iter().map(|s| s.as_str()).collect();
        listing(&refs)
    }

    fn names(files: &[RemoteFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    fn sel(variant: &str, layout: DecoderLayout) -> Selection {
        Selection {
            variant: Variant::parse(variant).unwrap(),
            layout,
        }
    }

    #[test]
    fn a_variant_takes_its_graphs_and_the_json_files_only() {
        let l = onnx_community();
        let got = select(&l, "o/f", "main", &sel("fp16", DecoderLayout::Split)).unwrap();
        assert_eq!(
            names(&got),
            [
                "config.json",
                "generation_config.json",
                "preprocessor_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "onnx/vision_encoder_fp16.onnx",
                "onnx/embed_tokens_fp16.onnx",
                "onnx/encoder_model_fp16.onnx",
                "onnx/decoder_model_fp16.onnx",
                "onnx/decoder_with_past_model_fp16.onnx",
            ]
        );
        let merged = select(&l, "o/f", "main", &sel("fp32", DecoderLayout::Merged)).unwrap();
        assert_eq!(
            names(&merged)[5..],
            [
                "onnx/vision_encoder.onnx",
                "onnx/embed_tokens.onnx",
                "onnx/encoder_model.onnx",
                "onnx/decoder_model_merged.onnx",
            ]
        );
    }

    #[test]
    fn embed_tokens_falls_back_to_fp32_as_the_runtime_does() {
        let l = onnx_community();
        let got = select(&l, "o/f", "main", &sel("q4", DecoderLayout::Split)).unwrap();
        assert!(names(&got).contains(&"onnx/embed_tokens.onnx"));
        assert!(names(&got).contains(&"onnx/vision_encoder_q4.onnx"));
    }

    #[test]
    fn external_data_files_travel_with_their_graph() {
        let mut l = onnx_community();
        for p in [
            "onnx/vision_encoder.onnx_data",
            "onnx/vision_encoder.onnx_data_1",
            "onnx/vision_encoder_fp16.onnx_data",
        ] {
            l.files.push(RemoteFile {
                path: p.into(),
                size: 1,
                sha256: None,
                blob_id: None,
            });
        }
        let got = select(&l, "o/f", "main", &sel("fp32", DecoderLayout::Split)).unwrap();
        let n = names(&got);
        assert!(n.contains(&"onnx/vision_encoder.onnx_data"));
        assert!(n.contains(&"onnx/vision_encoder.onnx_data_1"));
        assert!(!n.contains(&"onnx/vision_encoder_fp16.onnx_data"));
    }

    #[test]
    fn a_missing_variant_names_the_ones_there_are() {
        let l = onnx_community();
        let e = select(&l, "o/f", "main", &sel("bnb4", DecoderLayout::Split))
            .unwrap_err()
            .to_string();
        assert!(e.contains("onnx/vision_encoder_bnb4.onnx"), "{e}");
        assert!(e.contains("fp32, fp16, q4, quantized"), "{e}");
        let mut only_merged = onnx_community();
        only_merged
            .files
            .retain(|f| !f.path.starts_with("onnx/decoder_with_past"));
        let e = select(
            &only_merged,
            "o/f",
            "main",
            &sel("fp32", DecoderLayout::Split),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("merged decoder is one graph"), "{e}");
        let e = select(
            &listing(&["README.md"]),
            "o/f",
            "main",
            &sel("fp32", DecoderLayout::Split),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("config.json") && e.contains("onnx-community Florence-2"),
            "{e}"
        );
    }

    #[test]
    fn the_hub_listing_parses_and_bad_answers_are_named() {
        let body = format!(
            r#"{{"sha":"{}","siblings":[{{"rfilename":"config.json","size":12,"blobId":"x"}},
            {{"rfilename":"onnx/a.onnx","size":99,"lfs":{{"sha256":"{}","size":99,"pointerSize":134}}}}]}}"#,
            "a".repeat(40),
            "B".repeat(64)
        );
        let l = RemoteListing::parse("o/f", &body).unwrap();
        assert_eq!(l.files[0].sha256, None);
        assert_eq!(l.files[0].size, 12);
        assert_eq!(l.files[1].sha256.as_deref(), Some("b".repeat(64).as_str()));
        let e = RemoteListing::parse("o/f", r#"{"sha":"x","siblings":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a commit id"), "{e}");
        let e = RemoteListing::parse(
            "o/f",
            &format!(
                r#"{{"sha":"{}","siblings":[{{"rfilename":"c.json"}}]}}"#,
                "a".repeat(40)
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("c.json has no size"), "{e}");
    }
}
