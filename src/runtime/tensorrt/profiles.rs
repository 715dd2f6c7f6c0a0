//! Optimization profiles: what the configuration asks of the engines
//! ([`ProfileBounds`]) and what the model directory says about shapes
//! ([`ModelShapes`]) become the axis ranges every profile is made of
//! ([`ProfileRanges`]); [`graph_profile`] maps them onto the inputs a graph
//! declares, by name, into the min/opt/max shapes TensorRT builds an engine
//! for. The few numbers that are neither configuration nor model (prompt
//! lengths, the opt points) are data: `engines/profiles.toml`, compiled in
//! ([`ProfileData`]).

use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::{EngineError, EngineGraph};
use crate::runtime::{OrtRuntime, RuntimeError, TensorRtProfile};

/// `engines/profiles.toml`, compiled in.
const PROFILES_TOML: &str = include_str!("../../../engines/profiles.toml");

/// The numbers of `engines/profiles.toml` (the file says why each has its
/// value). TensorRT tunes kernels for the "opt" shape of each axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileData {
    pub prompt: PromptData,
    pub decoder: DecoderData,
}

/// `[prompt]`: prompt lengths in tokens, BOS and EOS included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptData {
    /// The `max_prompt_tokens` of [`ProfileBounds`] built from a
    /// configuration.
    pub default_max_tokens: usize,
    /// The prompt length the encoder sequence's opt is made of.
    pub opt_tokens: usize,
}

/// `[decoder]`: the decoder's self-attention cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderData {
    /// The opt of decoder_with_past's past length.
    pub opt_past_tokens: usize,
}

impl ProfileData {
    /// `engines/profiles.toml` as compiled in, parsed on first use.
    pub fn embedded() -> Result<&'static ProfileData, EngineError> {
        static PARSED: OnceLock<Result<ProfileData, String>> = OnceLock::new();
        PARSED
            .get_or_init(|| Self::parse(PROFILES_TOML))
            .as_ref()
            .map_err(|reason| EngineError::ProfileData(reason.clone()))
    }

    /// Parses profile data in the format of `engines/profiles.toml`.
    pub fn parse(text: &str) -> Result<ProfileData, String> {
        ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .build()
            .and_then(::config::Config::try_deserialize)
            .map_err(|e| e.to_string())
    }
}

/// A min/opt/max range of one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AxisRange {
    pub min: u64,
    pub opt: u64,
    pub max: u64,
}

impl AxisRange {
    fn fixed(n: u64) -> Self {
        Self {
            min: n,
            opt: n,
            max: n,
        }
    }

    fn new(min: u64, opt: u64, max: u64) -> Self {
        Self {
            min,
            opt: opt.clamp(min, max),
            max,
        }
    }
}

impl fmt::Display for AxisRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{} (opt {})", self.min, self.max, self.opt)
        }
    }
}

/// What the configuration asks of the engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileBounds {
    /// Images, and prompts, per batch (`model.max_batch`).
    pub max_batch: usize,
    /// 1 for greedy decoding; beam search runs `num_beams` decoder rows per
    /// prompt.
    pub num_beams: usize,
    /// `model.decoding.max_new_tokens`.
    pub max_new_tokens: usize,
    /// Longest tokenized prompt, BOS and EOS included.
    pub max_prompt_tokens: usize,
}

/// What the model directory says about shapes (DESIGN.md §3: read from the
/// files, never assumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShapes {
    pub image_height: u64,
    pub image_width: u64,
    /// Image tokens the vision encoder produces (577 for Florence-2).
    pub image_tokens: u64,
    /// Position embeddings of the language encoder and decoder, if
    /// config.json says.
    pub max_positions: Option<u64>,
}

fn read_json(path: &Path) -> Result<serde_json::Value, EngineError> {
    let text = fs::read_to_string(path).map_err(|e| EngineError::ModelFile {
        path: path.to_path_buf(),
        problem: format!("cannot be read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| EngineError::ModelFile {
        path: path.to_path_buf(),
        problem: format!("is not valid JSON: {e}"),
    })
}

impl ModelShapes {
    /// preprocessor_config.json: `size.{height,width}` and
    /// `image_seq_length`; config.json: `text_config.max_position_embeddings`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, EngineError> {
        let pre_path = dir.join("preprocessor_config.json");
        let pre = read_json(&pre_path)?;
        let number = |v: &serde_json::Value, key: &str| -> Result<u64, EngineError> {
            v.as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| EngineError::ModelFile {
                    path: pre_path.clone(),
                    problem: format!("{key} is {v}; expected a positive integer"),
                })
        };
        let size = pre.get("size").ok_or_else(|| EngineError::ModelFile {
            path: pre_path.clone(),
            problem: "has no `size` (the image size the vision encoder takes)".into(),
        })?;
        let image_height = number(&size["height"], "size.height")?;
        let image_width = number(&size["width"], "size.width")?;
        let image_tokens = number(&pre["image_seq_length"], "image_seq_length")?;
        let cfg_path = dir.join("config.json");
        let max_positions = if cfg_path.is_file() {
            let cfg = read_json(&cfg_path)?;
            cfg.get("text_config")
                .and_then(|t| t.get("max_position_embeddings"))
                .or_else(|| cfg.get("max_position_embeddings"))
                .and_then(serde_json::Value::as_u64)
        } else {
            None
        };
        Ok(Self {
            image_height,
            image_width,
            image_tokens,
            max_positions,
        })
    }
}

/// The axis ranges all profiles are made of. Part of the fingerprint: a
/// change here (e.g. a larger max_batch) means a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRanges {
    /// Vision encoder batch: images per batch.
    pub images: AxisRange,
    /// Encoder batch: prompts per batch (several tasks may share an image).
    pub prompts: AxisRange,
    /// Decoder rows: prompts × beams. embed_tokens runs on prompts (for the
    /// encoder) and on decoder rows (one token per step), so it takes these.
    pub rows: AxisRange,
    pub image_height: u64,
    pub image_width: u64,
    /// embed_tokens sequence: 1 (a decoder step) up to the longest prompt.
    pub prompt_tokens: AxisRange,
    /// Encoder sequence: the image tokens plus BOS + prompt + EOS.
    pub encoder_tokens: AxisRange,
    /// Decoder KV cache length fed to decoder_with_past: step k (k ≥ 1)
    /// feeds k past tokens, and decoding stops at max_length − 1 =
    /// max_new_tokens tokens.
    pub past_tokens: AxisRange,
}

impl ProfileRanges {
    pub fn new(bounds: &ProfileBounds, shapes: &ModelShapes) -> Result<Self, EngineError> {
        let data = ProfileData::embedded()?;
        let ProfileBounds {
            max_batch,
            num_beams,
            max_new_tokens,
            max_prompt_tokens,
        } = *bounds;
        if max_batch == 0 || num_beams == 0 || max_new_tokens == 0 {
            return Err(EngineError::Settings(format!(
                "max_batch ({max_batch}), num_beams ({num_beams}) and max_new_tokens ({max_new_tokens}) must each be at least 1"
            )));
        }
        // BOS + at least one prompt token + EOS.
        if max_prompt_tokens < 3 {
            return Err(EngineError::Settings(format!(
                "max_prompt_tokens is {max_prompt_tokens}; a prompt is at least 3 tokens (BOS, text, EOS)"
            )));
        }
        let encoder_max = shapes.image_tokens + max_prompt_tokens as u64;
        if let Some(limit) = shapes.max_positions {
            if encoder_max > limit {
                return Err(EngineError::Settings(format!(
                    "{} image tokens + {max_prompt_tokens} prompt tokens = {encoder_max} exceeds the model's {limit} positions; \
                     lower max_prompt_tokens to at most {}",
                    shapes.image_tokens,
                    limit.saturating_sub(shapes.image_tokens)
                )));
            }
            // The decoder sees max_length = 1 + max_new_tokens positions.
            if max_new_tokens as u64 + 1 > limit {
                return Err(EngineError::Settings(format!(
                    "max_new_tokens {max_new_tokens} + 1 exceeds the model's {limit} decoder positions"
                )));
            }
        }
        let batch = max_batch as u64;
        let rows = batch * num_beams as u64;
        let prompt = max_prompt_tokens as u64;
        Ok(Self {
            // Opt at the maximum: batches fill up exactly when throughput
            // matters.
            images: AxisRange::new(1, batch, batch),
            prompts: AxisRange::new(1, batch, batch),
            rows: AxisRange::new(1, rows, rows),
            image_height: shapes.image_height,
            image_width: shapes.image_width,
            prompt_tokens: AxisRange::new(1, 1, prompt),
            encoder_tokens: AxisRange::new(
                shapes.image_tokens + 1,
                shapes.image_tokens + data.prompt.opt_tokens as u64,
                encoder_max,
            ),
            past_tokens: AxisRange::new(
                1,
                data.decoder.opt_past_tokens as u64,
                max_new_tokens as u64,
            ),
        })
    }

    /// Field-by-field differences, for "what changed" messages.
    pub(super) fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let mut axis = |name: &str, a: AxisRange, b: AxisRange| {
            if a != b {
                out.push(format!("profile {name} {a} → {b}"));
            }
        };
        axis("images", self.images, other.images);
        axis("prompts", self.prompts, other.prompts);
        axis("decoder rows", self.rows, other.rows);
        axis("prompt tokens", self.prompt_tokens, other.prompt_tokens);
        axis("encoder tokens", self.encoder_tokens, other.encoder_tokens);
        axis("past tokens", self.past_tokens, other.past_tokens);
        if (self.image_height, self.image_width) != (other.image_height, other.image_width) {
            out.push(format!(
                "image size {}×{} → {}×{}",
                self.image_width, self.image_height, other.image_width, other.image_height
            ));
        }
        out
    }
}

/// One graph input as the graph declares it: `None` for a dynamic axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub dims: Vec<Option<u64>>,
}

/// The shapes of one input in a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShapes {
    pub name: String,
    pub min: Vec<u64>,
    pub opt: Vec<u64>,
    pub max: Vec<u64>,
}

/// One graph's optimization profile: every input with its shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphProfile {
    pub graph: EngineGraph,
    pub inputs: Vec<InputShapes>,
}

impl GraphProfile {
    fn shapes(&self, pick: impl Fn(&InputShapes) -> &Vec<u64>) -> String {
        self.inputs
            .iter()
            .map(|i| {
                let dims: Vec<String> = pick(i).iter().map(u64::to_string).collect();
                format!("{}:{}", i.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The provider's `trt_profile_{min,opt,max}_shapes` strings.
    pub fn tensorrt_profile(&self) -> TensorRtProfile {
        TensorRtProfile {
            min_shapes: self.shapes(|i| &i.min),
            opt_shapes: self.shapes(|i| &i.opt),
            max_shapes: self.shapes(|i| &i.max),
        }
    }

    pub fn input(&self, name: &str) -> Option<&InputShapes> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

/// Which range an axis of an input follows, by the graph contract of
/// DESIGN.md §3 (the names are those src/florence2/graphs.rs checks).
fn axis_range(
    graph: EngineGraph,
    input: &str,
    axis: usize,
    r: &ProfileRanges,
) -> Option<AxisRange> {
    use EngineGraph as G;
    let past = input.strip_prefix("past_key_values.");
    match (graph, input, axis) {
        (G::VisionEncoder, "pixel_values", 0) => Some(r.images),
        (G::VisionEncoder, "pixel_values", 1) => Some(AxisRange::fixed(3)),
        (G::VisionEncoder, "pixel_values", 2) => Some(AxisRange::fixed(r.image_height)),
        (G::VisionEncoder, "pixel_values", 3) => Some(AxisRange::fixed(r.image_width)),
        (G::EmbedTokens, "input_ids", 0) => Some(r.rows),
        (G::EmbedTokens, "input_ids", 1) => Some(r.prompt_tokens),
        (G::Encoder, "attention_mask" | "inputs_embeds", 0) => Some(r.prompts),
        (G::Encoder, "attention_mask" | "inputs_embeds", 1) => Some(r.encoder_tokens),
        (G::Decoder | G::DecoderWithPast, _, 0)
            if past.is_some() || DECODER_INPUTS.contains(&input) =>
        {
            Some(r.rows)
        }
        (
            G::Decoder | G::DecoderWithPast,
            "encoder_attention_mask" | "encoder_hidden_states",
            1,
        ) => Some(r.encoder_tokens),
        // One new token per row and step; the first step feeds the decoder
        // start token alone.
        (G::Decoder | G::DecoderWithPast, "inputs_embeds", 1) => Some(AxisRange::fixed(1)),
        (G::DecoderWithPast, _, 2) => match past {
            Some(rest) if rest.contains(".decoder.") => Some(r.past_tokens),
            Some(rest) if rest.contains(".encoder.") => Some(r.encoder_tokens),
            _ => None,
        },
        _ => None,
    }
}

const DECODER_INPUTS: [&str; 3] = [
    "encoder_attention_mask",
    "encoder_hidden_states",
    "inputs_embeds",
];

/// Inputs each graph may declare (past_key_values.* only for the decoder
/// with past).
fn input_allowed(graph: EngineGraph, name: &str) -> bool {
    match graph {
        EngineGraph::VisionEncoder => name == "pixel_values",
        EngineGraph::EmbedTokens => name == "input_ids",
        EngineGraph::Encoder => matches!(name, "attention_mask" | "inputs_embeds"),
        EngineGraph::Decoder => DECODER_INPUTS.contains(&name),
        EngineGraph::DecoderWithPast => {
            DECODER_INPUTS.contains(&name)
                || (name.starts_with("past_key_values.")
                    && (name.contains(".decoder.") || name.contains(".encoder.")))
        }
    }
}

/// The optimization profile of one graph from the inputs it declares.
/// Fixed axes keep the graph's size (heads, head size, hidden size) and must
/// agree with the contract where it names one (image size); every dynamic
/// axis must have a range in the contract — an input or axis this code does
/// not know is an error naming it, never a guess.
pub fn graph_profile(
    graph: EngineGraph,
    inputs: &[InputSpec],
    ranges: &ProfileRanges,
) -> Result<GraphProfile, EngineError> {
    let err = |input: &str, problem: String| EngineError::Profile {
        graph,
        input: input.to_string(),
        problem,
    };
    if inputs.iter().any(|i| i.name == "use_cache_branch") {
        return Err(EngineError::MergedDecoder);
    }
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        if !input_allowed(graph, &input.name) {
            return Err(err(
                &input.name,
                "is not an input of this graph in the Florence-2 graph contract (DESIGN.md §3)"
                    .into(),
            ));
        }
        let (mut min, mut opt, mut max) = (Vec::new(), Vec::new(), Vec::new());
        for (axis, dim) in input.dims.iter().enumerate() {
            let range = match (dim, axis_range(graph, &input.name, axis, ranges)) {
                (Some(n), Some(r)) if r.min == r.max && r.min != *n => {
                    return Err(err(
                        &input.name,
                        format!("axis {axis} is {n} in the graph but {} by the model's configuration", r.min),
                    ))
                }
                (Some(n), Some(r)) if r.min != r.max => {
                    return Err(err(
                        &input.name,
                        format!("axis {axis} is fixed to {n} in the graph but must range over {r}"),
                    ))
                }
                (Some(n), _) => AxisRange::fixed(*n),
                (None, Some(r)) => r,
                (None, None) => {
                    return Err(err(
                        &input.name,
                        format!(
                            "axis {axis} is dynamic in the graph and the graph contract gives no range for it"
                        ),
                    ))
                }
            };
            min.push(range.min);
            opt.push(range.opt);
            max.push(range.max);
        }
        out.push(InputShapes {
            name: input.name.clone(),
            min,
            opt,
            max,
        });
    }
    Ok(GraphProfile { graph, inputs: out })
}

/// The inputs a graph file declares, read with a CPU session (no graph
/// optimization, nothing run).
pub fn read_graph_inputs(rt: &OrtRuntime, path: &Path) -> Result<Vec<InputSpec>, EngineError> {
    use ort::session::builder::GraphOptimizationLevel;
    use ort::session::Session;
    use ort::value::ValueType;
    let err = |e: String| {
        EngineError::Runtime(RuntimeError::Session {
            path: path.to_path_buf(),
            reason: e,
        })
    };
    let session = Session::builder(&rt.environment)
        .map_err(|e| err(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|e| err(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| err(e.to_string()))?;
    session
        .inputs()
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { shape, .. } => Ok(InputSpec {
                name: o.name().to_string(),
                dims: shape.iter().map(|&d| u64::try_from(d).ok()).collect(),
            }),
            other => Err(err(format!(
                "input {:?} is {other:?}; TensorRT profiles need tensors",
                o.name()
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tensorrt::EngineError;

    fn base_ranges() -> ProfileRanges {
        ProfileRanges::new(
            &ProfileBounds {
                max_batch: 8,
                num_beams: 3,
                max_new_tokens: 256,
                max_prompt_tokens: 64,
            },
            &ModelShapes {
                image_height: 768,
                image_width: 768,
                image_tokens: 577,
                max_positions: Some(1024),
            },
        )
        .unwrap()
    }

    #[test]
    fn the_embedded_profile_data_parses_to_the_numbers_the_profiles_used_before() {
        let data = ProfileData::embedded().expect("engines/profiles.toml parses");
        assert_eq!(
            *data,
            ProfileData {
                prompt: PromptData {
                    default_max_tokens: 64,
                    opt_tokens: 16,
                },
                decoder: DecoderData {
                    opt_past_tokens: 64,
                },
            }
        );
    }

    #[test]
    fn profile_data_with_a_missing_or_an_unknown_key_is_refused_naming_it() {
        let e = ProfileData::parse(
            "[prompt]\ndefault_max_tokens = 64\n[decoder]\nopt_past_tokens = 64\n",
        )
        .unwrap_err();
        assert!(e.contains("opt_tokens"), "{e}");
        let e = ProfileData::parse(&format!("{PROFILES_TOML}\n[encoder]\nopt_tokens = 1\n"))
            .unwrap_err();
        assert!(e.contains("encoder"), "{e}");
    }

    #[test]
    fn ranges_follow_batch_beams_and_lengths() {
        let r = base_ranges();
        assert_eq!(
            r.images,
            AxisRange {
                min: 1,
                opt: 8,
                max: 8
            }
        );
        assert_eq!(
            r.rows,
            AxisRange {
                min: 1,
                opt: 24,
                max: 24
            }
        );
        assert_eq!(
            r.encoder_tokens,
            AxisRange {
                min: 578,
                opt: 593,
                max: 641
            }
        );
        assert_eq!(
            r.past_tokens,
            AxisRange {
                min: 1,
                opt: 64,
                max: 256
            }
        );
        assert_eq!(
            r.prompt_tokens,
            AxisRange {
                min: 1,
                opt: 1,
                max: 64
            }
        );
    }

    #[test]
    fn bounds_beyond_the_models_positions_are_refused_with_the_limit() {
        let e = ProfileRanges::new(
            &ProfileBounds {
                max_batch: 1,
                num_beams: 1,
                max_new_tokens: 16,
                max_prompt_tokens: 500,
            },
            &ModelShapes {
                image_height: 768,
                image_width: 768,
                image_tokens: 577,
                max_positions: Some(1024),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("1077") && e.contains("at most 447"), "{e}");
    }

    #[test]
    fn an_unknown_dynamic_axis_is_an_error_naming_it() {
        let e = graph_profile(
            EngineGraph::VisionEncoder,
            &[InputSpec {
                name: "pixel_values".into(),
                dims: vec![None, Some(3), None, None, None],
            }],
            &base_ranges(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pixel_values") && e.contains("axis 4"), "{e}");
    }

    #[test]
    fn a_fixed_image_size_that_disagrees_with_the_preprocessor_is_an_error() {
        let e = graph_profile(
            EngineGraph::VisionEncoder,
            &[InputSpec {
                name: "pixel_values".into(),
                dims: vec![None, Some(3), Some(512), Some(512)],
            }],
            &base_ranges(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("512") && e.contains("768"), "{e}");
    }

    #[test]
    fn the_merged_decoder_input_is_refused() {
        let e = graph_profile(
            EngineGraph::Decoder,
            &[InputSpec {
                name: "use_cache_branch".into(),
                dims: vec![Some(1)],
            }],
            &base_ranges(),
        )
        .unwrap_err();
        assert!(matches!(e, EngineError::MergedDecoder));
    }
}
