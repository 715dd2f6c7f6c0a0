//! Florence-2 on ONNX Runtime: `encode_image` (vision encoder), `encode`
//! (embed the prompt, concatenate with the image features, run the encoder)
//! and `generate` (decoder loop with KV cache), following the reference
//! implementation step by step (DESIGN.md §3).
//!
//! Loading a model directory and checking its graphs against the contract
//! is in `model/load.rs`; one decoder step through IO bindings, the KV
//! cache staying in the placement's memory, in `model/step.rs`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ort::memory::Allocator;
use ort::value::{DynValue, TensorElementType};

use super::config::{Florence2Config, GenerationConfig, SequenceLimit};
use super::generate::{self, SearchConfig, Strategy};
use super::graphs::{self, DecoderLayout, FloatType, Graph, Variant};
use super::tokenizer::FlorenceTokenizer;
use super::ModelError;
use crate::runtime::device::{Placement, RowGather};
use crate::runtime::BackendChoice;

mod load;
mod step;

pub use load::LoadOptions;
use step::OrtStep;

/// Wall-clock time per stage of one `generate` call.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimings {
    pub vision_ms: f64,
    pub encoder_ms: f64,
    pub decode_ms: f64,
    pub decode_steps: usize,
    /// Images the vision encoder ran on. Below the batch size when several
    /// items of the batch asked about the same frame: each distinct frame
    /// is encoded once and its features serve every item that asked.
    pub vision_images: usize,
    /// Time spent inside ONNX Runtime `run` calls (all graphs); the rest of
    /// the model stages is orchestration (tensor building, search).
    pub session_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The vision encoder's input for a batch of distinct images.
pub enum Pixels<'a> {
    /// Preprocessed on the host, NCHW f32; converted to the graph's element
    /// type and copied to the device by ONNX Runtime.
    Host {
        values: &'a [f32],
        shape: [usize; 4],
    },
    /// A tensor already in the graph's element type and shape `[images, 3,
    /// H, W]`, wherever it lives — typically made by
    /// [`Florence2::pixel_tensor`] in device memory and filled there by the
    /// preprocessing kernel, so the frames never pass through host memory
    /// as floats.
    Tensor(DynValue),
}

impl Pixels<'_> {
    fn images(&self) -> Result<usize, ModelError> {
        match self {
            Pixels::Host { shape, .. } => Ok(shape[0]),
            Pixels::Tensor(t) if t.dtype().tensor_type().is_some() => match &t.shape()[..] {
                [n, 3, _, _] if *n >= 0 => Ok(*n as usize),
                other => Err(ModelError::Input(format!(
                    "pixel tensor of shape {other:?}; expected [images, 3, height, width]"
                ))),
            },
            Pixels::Tensor(_) => Err(ModelError::Input(
                "pixel values given as a value that is not a tensor".into(),
            )),
        }
    }
}

/// Names of one layer's cache tensors.
#[derive(Debug, Clone)]
struct KvLayer {
    past_decoder: [String; 2],
    past_encoder: [String; 2],
    present_decoder: [String; 2],
    present_encoder: [String; 2],
}

pub struct Florence2 {
    pub dir: PathBuf,
    pub variant: Variant,
    pub layout: DecoderLayout,
    pub backend: BackendChoice,
    pub tokenizer: FlorenceTokenizer,
    pub generation: GenerationConfig,
    pub config: Florence2Config,
    /// Image tokens + prompt tokens ≤ position embeddings; `None` when the
    /// model directory does not declare them.
    pub sequence_limit: Option<SequenceLimit>,
    vision: Graph,
    embed: Graph,
    encoder: Graph,
    decoder: Graph,
    decoder_with_past: Option<Graph>,
    kv: Vec<KvLayer>,
    /// Heads and head size of the decoder cache (for the merged graph's
    /// empty first-step cache).
    kv_heads: i64,
    kv_head_dim: i64,
    pixel_type: FloatType,
    embeds_in_type: [FloatType; 2],
    kv_type: FloatType,
    vocab_size: usize,
    /// (height, width) the vision encoder expects, when the graph fixes it.
    pub pixel_size: Option<(usize, usize)>,
    /// Time inside ONNX Runtime since the last `generate` started.
    session_time: Duration,
    /// Where the cache and hidden states stay between calls.
    placement: Placement,
    /// Beam reorders and per-beam expansion, done where the rows are.
    gather: RowGather,
}

impl Florence2 {
    /// Where this model keeps tensors between calls.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The vision encoder's graph file, for messages.
    pub fn vision_path(&self) -> &std::path::Path {
        &self.vision.path
    }

    /// The element type of the vision encoder's `pixel_values`.
    pub fn pixel_type(&self) -> FloatType {
        self.pixel_type
    }

    /// An uninitialised pixel tensor `[images, 3, height, width]` of the
    /// vision encoder's element type, allocated by its session in the
    /// placement's device memory: the preprocessing kernel writes into it
    /// and it goes to [`Pixels::Tensor`] as it is.
    pub fn pixel_tensor(&self, images: usize) -> Result<ort::value::DynTensor, ModelError> {
        let (h, w) = self.pixel_size.ok_or_else(|| ModelError::Contract {
            path: self.vision.path.clone(),
            tensor: "input \"pixel_values\"".into(),
            problem: "has a symbolic height/width; a device pixel buffer needs them fixed".into(),
        })?;
        let allocator = Allocator::new(&self.vision.session, self.placement.device().clone())
            .map_err(|e| self.vision.run_error(e))?;
        let ty = match self.pixel_type {
            FloatType::F32 => TensorElementType::Float32,
            FloatType::F16 => TensorElementType::Float16,
        };
        let shape = [images, 3, h, w];
        ort::value::DynTensor::new(&allocator, ty, shape).map_err(|e| self.vision.run_error(e))
    }

    /// Search settings from the generation config, with the caller's
    /// token budget.
    pub fn search_config(&self, max_new_tokens: usize) -> SearchConfig {
        let g = &self.generation;
        SearchConfig {
            decoder_start_token_id: g.decoder_start_token_id,
            eos_token_id: g.eos_token_id,
            pad_token_id: g.pad_token_id,
            forced_bos_token_id: g.forced_bos_token_id,
            forced_eos_token_id: g.forced_eos_token_id,
            no_repeat_ngram_size: g.no_repeat_ngram_size,
            max_new_tokens,
            early_stopping: g.early_stopping,
            length_penalty: g.length_penalty,
        }
    }

    /// Vision encoder: pixel values `[batch, 3, H, W]` → image features
    /// `[batch, tokens, d]` in host memory (the encoder input is assembled
    /// on the host from them and the prompt embeddings).
    pub fn encode_image(&mut self, pixels: Pixels<'_>) -> Result<DynValue, ModelError> {
        let g = &mut self.vision;
        let pv = match pixels {
            Pixels::Host { values, shape } => {
                let expected: usize = shape.iter().product();
                if values.len() != expected {
                    return Err(ModelError::Input(format!(
                        "pixel values hold {} floats; shape {:?} needs {expected}",
                        values.len(),
                        shape
                    )));
                }
                graphs::float_tensor(
                    self.pixel_type,
                    shape.iter().map(|&d| d as i64).collect(),
                    values,
                )
                .map_err(|e| g.run_error(e))?
            }
            Pixels::Tensor(t) => t,
        };
        let t = Instant::now();
        let out = g.session.run(ort::inputs! {"pixel_values" => pv});
        self.session_time += t.elapsed();
        let mut out = out.map_err(|e| ModelError::Run {
            path: g.path.clone(),
            reason: e.to_string(),
        })?;
        out.remove("image_features").ok_or_else(|| ModelError::Run {
            path: g.path.clone(),
            reason: "no output image_features".into(),
        })
    }

    fn embed_ids(&mut self, ids: Vec<i64>, rows: usize) -> Result<DynValue, ModelError> {
        let cols = ids.len() / rows.max(1);
        let g = &mut self.embed;
        let t =
            graphs::i64_tensor(vec![rows as i64, cols as i64], ids).map_err(|e| g.run_error(e))?;
        let start = Instant::now();
        let out = g.session.run(ort::inputs! {"input_ids" => t});
        self.session_time += start.elapsed();
        let mut out = out.map_err(|e| ModelError::Run {
            path: g.path.clone(),
            reason: e.to_string(),
        })?;
        out.remove("inputs_embeds").ok_or_else(|| ModelError::Run {
            path: g.path.clone(),
            reason: "no output inputs_embeds".into(),
        })
    }

    /// Encoder: concat(image features, embed(prompt ids)) with the mask of
    /// ones for the image tokens plus the prompt mask. Prompts of different
    /// lengths are right-padded with the pad token and masked.
    /// Returns the encoder's last hidden state and the attention mask.
    pub fn encode(
        &mut self,
        image_features: &DynValue,
        prompts: &[Vec<i64>],
    ) -> Result<(DynValue, Vec<i64>, usize), ModelError> {
        let image_of: Vec<usize> = (0..prompts.len()).collect();
        self.encode_shared(image_features, &image_of, prompts)
    }

    /// `encode` where prompt `i` goes with image `image_of[i]` of the
    /// features: several prompts may ask about one image, whose features
    /// are then copied into each of their encoder rows (the rows the
    /// reference would compute by encoding that image once per prompt).
    pub fn encode_shared(
        &mut self,
        image_features: &DynValue,
        image_of: &[usize],
        prompts: &[Vec<i64>],
    ) -> Result<(DynValue, Vec<i64>, usize), ModelError> {
        let (fshape, feats) =
            graphs::read_f32(image_features).map_err(|e| self.vision.run_error(e))?;
        let batch = prompts.len();
        if fshape.len() != 3 {
            return Err(ModelError::Input(format!(
                "image features of shape {fshape:?}; expected [images, tokens, width]"
            )));
        }
        let images = fshape[0] as usize;
        if image_of.len() != batch {
            return Err(ModelError::Input(format!(
                "{} image indices for a batch of {batch} prompts",
                image_of.len()
            )));
        }
        if let Some(&bad) = image_of.iter().find(|&&i| i >= images) {
            return Err(ModelError::Input(format!(
                "image index {bad} for image features of shape {fshape:?} ({images} images)"
            )));
        }
        let (n_img, d) = (fshape[1] as usize, fshape[2] as usize);
        let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pad = self.generation.pad_token_id;
        let mut ids = Vec::with_capacity(batch * t);
        let mut mask = Vec::with_capacity(batch * (n_img + t));
        for p in prompts {
            ids.extend_from_slice(p);
            ids.extend(std::iter::repeat_n(pad, t - p.len()));
            mask.extend(std::iter::repeat_n(1i64, n_img));
            mask.extend(std::iter::repeat_n(1i64, p.len()));
            mask.extend(std::iter::repeat_n(0i64, t - p.len()));
        }
        let text = self.embed_ids(ids, batch)?;
        let (tshape, temb) = graphs::read_f32(&text).map_err(|e| self.embed.run_error(e))?;
        if tshape.len() != 3 || tshape[2] as usize != d {
            return Err(ModelError::Contract {
                path: self.embed.path.clone(),
                tensor: "output \"inputs_embeds\"".into(),
                problem: format!(
                    "has shape {tshape:?}; its width must equal the image features' {d}"
                ),
            });
        }
        let s = n_img + t;
        let mut embeds = Vec::with_capacity(batch * s * d);
        for (b, &img) in image_of.iter().enumerate() {
            embeds.extend_from_slice(&feats[img * n_img * d..(img + 1) * n_img * d]);
            embeds.extend_from_slice(&temb[b * t * d..(b + 1) * t * d]);
        }
        let g = &mut self.encoder;
        let emb = graphs::float_tensor(
            self.embeds_in_type[0],
            vec![batch as i64, s as i64, d as i64],
            &embeds,
        )
        .map_err(|e| g.run_error(e))?;
        let m = graphs::i64_tensor(vec![batch as i64, s as i64], mask.clone())
            .map_err(|e| g.run_error(e))?;
        // The hidden state stays in device memory: every decoder step reads
        // it.
        let mut binding = g.session.create_binding().map_err(|e| g.run_error(e))?;
        binding
            .bind_input("attention_mask", &m)
            .and_then(|_| binding.bind_input("inputs_embeds", &emb))
            .and_then(|_| {
                binding.bind_output_to_device("last_hidden_state", self.placement.device())
            })
            .map_err(|e| g.run_error(e))?;
        let start = Instant::now();
        let out = g.session.run_binding(&binding);
        self.session_time += start.elapsed();
        let mut out = out.map_err(|e| ModelError::Run {
            path: g.path.clone(),
            reason: e.to_string(),
        })?;
        let hidden = out
            .remove("last_hidden_state")
            .ok_or_else(|| ModelError::Run {
                path: g.path.clone(),
                reason: "no output last_hidden_state".into(),
            })?;
        Ok((hidden, mask, s))
    }

    /// Full generation for a batch: images (already preprocessed, NCHW) and
    /// one prompt (token ids) per image. Returns the token sequences as the
    /// reference's `generate` does (decoder start, forced BOS, …, EOS, pad).
    pub fn generate(
        &mut self,
        pixels: Pixels<'_>,
        prompts: &[Vec<i64>],
        strategy: Strategy,
        max_new_tokens: usize,
    ) -> Result<(Vec<Vec<i64>>, StageTimings), ModelError> {
        let images = pixels.images()?;
        if prompts.len() != images {
            return Err(ModelError::Input(format!(
                "{} prompts for a batch of {images} images",
                prompts.len(),
            )));
        }
        let image_of: Vec<usize> = (0..images).collect();
        self.generate_shared(pixels, &image_of, prompts, strategy, max_new_tokens)
    }

    /// `generate` for prompts that share images: `pixels` holds the
    /// distinct images and prompt `i` asks about image `image_of[i]`. The vision encoder runs once per distinct image (the
    /// expensive stage on a frame two tasks ask about), and the rest runs
    /// one row per prompt, so every row gets the tokens it would get alone.
    pub fn generate_shared(
        &mut self,
        pixels: Pixels<'_>,
        image_of: &[usize],
        prompts: &[Vec<i64>],
        strategy: Strategy,
        max_new_tokens: usize,
    ) -> Result<(Vec<Vec<i64>>, StageTimings), ModelError> {
        if image_of.len() != prompts.len() {
            return Err(ModelError::Input(format!(
                "{} image indices for {} prompts",
                image_of.len(),
                prompts.len()
            )));
        }
        let images = pixels.images()?;
        if let Some(&bad) = image_of.iter().find(|&&i| i >= images) {
            return Err(ModelError::Input(format!(
                "prompt asks about image {bad} of a batch of {images} images",
            )));
        }
        if max_new_tokens == 0 {
            return Err(ModelError::Input(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        let mut timings = StageTimings::default();
        self.session_time = Duration::ZERO;
        let t0 = Instant::now();
        let features = self.encode_image(pixels)?;
        timings.vision_ms = ms(t0.elapsed());
        timings.vision_images = images;
        let t1 = Instant::now();
        let (hidden, mask, s) = self.encode_shared(&features, image_of, prompts)?;
        timings.encoder_ms = ms(t1.elapsed());
        let t2 = Instant::now();
        let batch = prompts.len();
        let beams = match strategy {
            Strategy::Greedy => 1,
            Strategy::Beam { num_beams } => num_beams.max(1),
        };
        // Beam search runs every beam as its own row (the reference expands
        // the encoder outputs per beam).
        let (hidden, mask) = if beams > 1 {
            let rows: Vec<usize> = (0..batch)
                .flat_map(|b| std::iter::repeat_n(b, beams))
                .collect();
            let h = self.gather.gather(&hidden, &rows)?;
            let m: Vec<i64> = rows
                .iter()
                .flat_map(|&b| mask[b * s..(b + 1) * s].iter().copied())
                .collect();
            (h, m)
        } else {
            (hidden, mask)
        };
        let cfg = self.search_config(max_new_tokens);
        let rows = batch * beams;
        let mask = graphs::i64_tensor(vec![rows as i64, s as i64], mask)
            .map_err(|e| ModelError::Input(e.to_string()))?;
        let mut step = OrtStep::new(self, &hidden, &mask, rows)?;
        let seqs = match strategy {
            Strategy::Greedy => generate::greedy(&cfg, batch, &mut step)?,
            Strategy::Beam { .. } => generate::beam_search(&cfg, batch, beams, &mut step)?,
        };
        timings.decode_steps = step.steps;
        timings.decode_ms = ms(t2.elapsed());
        timings.session_ms = ms(self.session_time);
        Ok((seqs, timings))
    }
}
