//! Florence-2 on ONNX Runtime: `encode_image` (vision encoder), `encode`
//! (embed the prompt, concatenate with the image features, run the encoder)
//! and `generate` (decoder loop with KV cache), following the reference
//! implementation step by step (DESIGN.md §3).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::value::{DynValue, Tensor, TensorElementType};

use super::config::{GenerationConfig, ModelConfig};
use super::generate::{self, DecoderStep, SearchConfig, Strategy};
use super::graphs::{self, DecoderLayout, FloatType, Graph, GraphFiles, Variant, INT64};
use super::tokenizer::FlorenceTokenizer;
use super::ModelError;
use crate::runtime::{self, Backend, BackendChoice, SessionOptions};

/// How to load a model directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dir: PathBuf,
    pub variant: Variant,
    pub layout: DecoderLayout,
    pub backend: Backend,
    pub ort_library: Option<PathBuf>,
    /// Intra-op threads per session; 0 means one per available core.
    pub intra_threads: usize,
    pub engine_cache_dir: Option<PathBuf>,
    /// TensorRT: the engines `build-engines` (or the daemon's start-up
    /// check) built, whose profiles and cache prefixes every session must
    /// use — ONNX Runtime rebuilds silently when they differ. `None` lets
    /// the TensorRT provider build engines lazily in `engine_cache_dir`.
    pub engine_manifest: Option<runtime::engines::EngineManifest>,
    /// TensorRT FP16 kernels (LayerNorm kept in FP32).
    pub tensorrt_fp16: bool,
}

impl LoadOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            variant: Variant::fp32(),
            layout: DecoderLayout::Split,
            backend: Backend::Auto,
            ort_library: None,
            intra_threads: 0,
            engine_cache_dir: None,
            engine_manifest: None,
            tensorrt_fp16: true,
        }
    }
}

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
    pub config: ModelConfig,
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
}

impl Florence2 {
    pub fn load(opts: &LoadOptions) -> Result<Self, ModelError> {
        let dir = &opts.dir;
        if !dir.is_dir() {
            return Err(ModelError::File {
                path: dir.clone(),
                problem: "is not a directory; expected a Florence-2 model directory in the onnx-community layout (config.json, tokenizer.json, onnx/…)".into(),
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::File {
                path: config_path,
                problem: "is missing; a Florence-2 model directory has config.json".into(),
            });
        }
        let config = ModelConfig::from_file(&config_path)?;
        let generation =
            GenerationConfig::from_files(&dir.join("generation_config.json"), &config_path)?;
        let tokenizer = FlorenceTokenizer::from_dir(dir)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(ModelError::File {
                path: tokenizer.path().to_path_buf(),
                problem: format!(
                    "has {} tokens but config.json says vocab_size {}; the tokenizer does not belong to this model",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        let files = GraphFiles::resolve(dir, &opts.variant, opts.layout)?;

        let rt = runtime::init(opts.ort_library.as_deref())?;
        let backend = runtime::choose_backend(opts.backend, rt.providers)?;
        tracing::info!(backend = %backend.backend, reason = %backend.reason, "Inference backend chosen.");
        let session_options = SessionOptions {
            backend: backend.backend,
            intra_threads: opts.intra_threads,
            tensorrt_fp16: opts.tensorrt_fp16,
            engine_cache_dir: opts.engine_cache_dir.clone(),
        };
        use runtime::engines::EngineGraph;
        let manifest = opts
            .engine_manifest
            .as_ref()
            .filter(|_| backend.backend == runtime::Backend::TensorRt);
        let open = |p: &Path, graph: EngineGraph| match manifest {
            Some(m) => {
                let trt = m.session_options(graph).ok_or_else(|| ModelError::File {
                    path: p.to_path_buf(),
                    problem: format!(
                        "has no engine in the TensorRT engine manifest ({graph:?}); run `florence-edge build-engines`"
                    ),
                })?;
                Graph::open_tensorrt(rt, p, &session_options, &trt)
            }
            None => Graph::open(rt, p, &session_options),
        };
        let vision = open(&files.vision_encoder, EngineGraph::VisionEncoder)?;
        let embed = open(&files.embed_tokens, EngineGraph::EmbedTokens)?;
        let encoder = open(&files.encoder, EngineGraph::Encoder)?;
        let decoder = open(&files.decoder, EngineGraph::Decoder)?;
        let decoder_with_past = files
            .decoder_with_past
            .as_deref()
            .map(|p| open(p, EngineGraph::DecoderWithPast))
            .transpose()?;

        // The graph contract, by name.
        let pixel_type = vision.require_float_input("pixel_values", 4)?;
        vision.require_float_output("image_features", 3)?;
        let pixel_spec = vision.require_input("pixel_values", 4, graphs::FLOATS)?;
        let pixel_size = match (pixel_spec.dims[2], pixel_spec.dims[3]) {
            (h, w) if h > 0 && w > 0 => Some((h as usize, w as usize)),
            _ => None,
        };
        embed.require_input("input_ids", 2, INT64)?;
        embed.require_float_output("inputs_embeds", 3)?;
        encoder.require_input("attention_mask", 2, INT64)?;
        let enc_in = encoder.require_float_input("inputs_embeds", 3)?;
        encoder.require_float_output("last_hidden_state", 3)?;
        decoder.require_input("encoder_attention_mask", 2, INT64)?;
        let dec_in = decoder.require_float_input("inputs_embeds", 3)?;
        decoder.require_float_input("encoder_hidden_states", 3)?;
        let logits = decoder.require_output("logits", 3, graphs::FLOATS)?;
        let vocab_size = match logits.dims[2] {
            v if v > 0 => v as usize,
            _ => config.vocab_size,
        };
        if vocab_size != config.vocab_size {
            return Err(ModelError::Contract {
                path: decoder.path.clone(),
                tensor: "output \"logits\"".into(),
                problem: format!(
                    "has vocabulary width {vocab_size} but config.json says vocab_size {}",
                    config.vocab_size
                ),
            });
        }
        if opts.layout == DecoderLayout::Merged {
            decoder.require_input("use_cache_branch", 1, &[TensorElementType::Bool])?;
        }
        let with_past = decoder_with_past.as_ref().unwrap_or(&decoder);
        with_past.require_input("encoder_attention_mask", 2, INT64)?;
        with_past.require_float_input("inputs_embeds", 3)?;
        with_past.require_output("logits", 3, graphs::FLOATS)?;

        let mut kv = Vec::new();
        while decoder
            .output(&format!("present.{}.decoder.key", kv.len()))
            .is_some()
        {
            let i = kv.len();
            let layer = KvLayer {
                past_decoder: [
                    format!("past_key_values.{i}.decoder.key"),
                    format!("past_key_values.{i}.decoder.value"),
                ],
                past_encoder: [
                    format!("past_key_values.{i}.encoder.key"),
                    format!("past_key_values.{i}.encoder.value"),
                ],
                present_decoder: [
                    format!("present.{i}.decoder.key"),
                    format!("present.{i}.decoder.value"),
                ],
                present_encoder: [
                    format!("present.{i}.encoder.key"),
                    format!("present.{i}.encoder.value"),
                ],
            };
            for name in layer.present_decoder.iter().chain(&layer.present_encoder) {
                decoder.require_float_output(name, 4)?;
            }
            for name in layer.past_decoder.iter().chain(&layer.past_encoder) {
                with_past.require_float_input(name, 4)?;
            }
            with_past.require_float_output(&layer.present_decoder[0], 4)?;
            with_past.require_float_output(&layer.present_decoder[1], 4)?;
            kv.push(layer);
        }
        if kv.is_empty() {
            return Err(ModelError::Contract {
                path: decoder.path.clone(),
                tensor: "outputs \"present.0.decoder.key\" …".into(),
                problem: format!(
                    "are missing; the graph declares {}",
                    decoder.output_names().join(", ")
                ),
            });
        }
        let past0 = with_past.require_input(&kv[0].past_decoder[0], 4, graphs::FLOATS)?;
        let kv_type = if past0.ty == TensorElementType::Float16 {
            FloatType::F16
        } else {
            FloatType::F32
        };
        let (kv_heads, kv_head_dim) = (past0.dims[1], past0.dims[3]);
        if opts.layout == DecoderLayout::Merged && (kv_heads <= 0 || kv_head_dim <= 0) {
            return Err(ModelError::Contract {
                path: decoder.path.clone(),
                tensor: format!("input {:?}", kv[0].past_decoder[0]),
                problem: format!("has symbolic heads/head size {:?}; the merged decoder needs them fixed to build its first-step cache", past0.dims),
            });
        }
        tracing::info!(
            model = %dir.display(),
            variant = opts.variant.name(),
            layout = ?opts.layout,
            decoder_layers = kv.len(),
            vocab_size,
            "Florence-2 model loaded."
        );
        Ok(Self {
            dir: dir.clone(),
            variant: opts.variant.clone(),
            layout: opts.layout,
            backend,
            tokenizer,
            generation,
            config,
            vision,
            embed,
            encoder,
            decoder,
            decoder_with_past,
            kv,
            kv_heads,
            kv_head_dim,
            pixel_type,
            embeds_in_type: [enc_in, dec_in],
            kv_type,
            vocab_size,
            pixel_size,
            session_time: Duration::ZERO,
        })
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
    /// `[batch, tokens, d]`.
    pub fn encode_image(
        &mut self,
        pixel_values: &[f32],
        shape: [usize; 4],
    ) -> Result<DynValue, ModelError> {
        let expected: usize = shape.iter().product();
        if pixel_values.len() != expected {
            return Err(ModelError::Input(format!(
                "pixel values hold {} floats; shape {:?} needs {expected}",
                pixel_values.len(),
                shape
            )));
        }
        let g = &mut self.vision;
        let pv = graphs::float_tensor(
            self.pixel_type,
            shape.iter().map(|&d| d as i64).collect(),
            pixel_values,
        )
        .map_err(|e| g.run_error(e))?;
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
        let start = Instant::now();
        let out = g
            .session
            .run(ort::inputs! {"attention_mask" => m, "inputs_embeds" => emb});
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
        pixel_values: &[f32],
        shape: [usize; 4],
        prompts: &[Vec<i64>],
        strategy: Strategy,
        max_new_tokens: usize,
    ) -> Result<(Vec<Vec<i64>>, StageTimings), ModelError> {
        if prompts.len() != shape[0] {
            return Err(ModelError::Input(format!(
                "{} prompts for a batch of {} images",
                prompts.len(),
                shape[0]
            )));
        }
        let image_of: Vec<usize> = (0..shape[0]).collect();
        self.generate_shared(
            pixel_values,
            shape,
            &image_of,
            prompts,
            strategy,
            max_new_tokens,
        )
    }

    /// `generate` for prompts that share images: `pixel_values` holds
    /// `shape[0]` distinct images and prompt `i` asks about image
    /// `image_of[i]`. The vision encoder runs once per distinct image (the
    /// expensive stage on a frame two tasks ask about), and the rest runs
    /// one row per prompt, so every row gets the tokens it would get alone.
    pub fn generate_shared(
        &mut self,
        pixel_values: &[f32],
        shape: [usize; 4],
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
        if let Some(&bad) = image_of.iter().find(|&&i| i >= shape[0]) {
            return Err(ModelError::Input(format!(
                "prompt asks about image {bad} of a batch of {} images",
                shape[0]
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
        let features = self.encode_image(pixel_values, shape)?;
        timings.vision_ms = ms(t0.elapsed());
        timings.vision_images = shape[0];
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
            let h = graphs::gather_rows(&hidden, &rows).map_err(|e| self.encoder.run_error(e))?;
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
        let mut step = OrtStep {
            model: self,
            hidden,
            mask: graphs::i64_tensor(vec![rows as i64, s as i64], mask)
                .map_err(|e| ModelError::Input(e.to_string()))?,
            rows,
            decoder_kv: None,
            encoder_kv: Vec::new(),
            steps: 0,
        };
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

/// The decoder with its KV cache, one step at a time.
struct OrtStep<'m> {
    model: &'m mut Florence2,
    hidden: DynValue,
    mask: DynValue,
    rows: usize,
    /// Self-attention cache, per layer (key, value); `None` before step 0.
    decoder_kv: Option<Vec<[DynValue; 2]>>,
    /// Cross-attention cache from step 0, reused for every later step.
    encoder_kv: Vec<[DynValue; 2]>,
    steps: usize,
}

impl OrtStep<'_> {
    fn embeds(&mut self, tokens: &[i64]) -> Result<DynValue, ModelError> {
        let e = self.model.embed_ids(tokens.to_vec(), tokens.len())?;
        // Convert only if the embedding graph and the decoder disagree on
        // the element type (e.g. an FP32 embed_tokens with FP16 decoders).
        let want = self.model.embeds_in_type[1];
        let have = if e.dtype().tensor_type() == Some(TensorElementType::Float16) {
            FloatType::F16
        } else {
            FloatType::F32
        };
        if want == have {
            return Ok(e);
        }
        let (shape, data) = graphs::read_f32(&e).map_err(|err| self.model.embed.run_error(err))?;
        graphs::float_tensor(want, shape, &data).map_err(|err| self.model.embed.run_error(err))
    }

    fn empty_kv(&self) -> Result<DynValue, ModelError> {
        let shape = vec![
            self.rows as i64,
            self.model.kv_heads,
            0,
            self.model.kv_head_dim,
        ];
        graphs::float_tensor(self.model.kv_type, shape, &[])
            .map_err(|e| self.model.decoder.run_error(e))
    }
}

impl DecoderStep for OrtStep<'_> {
    type Error = ModelError;

    fn vocab_size(&self) -> usize {
        self.model.vocab_size
    }

    fn step(&mut self, tokens: &[i64], reorder: Option<&[usize]>) -> Result<Vec<f32>, ModelError> {
        if tokens.len() != self.rows {
            return Err(ModelError::Input(format!(
                "{} tokens for {} decoder rows",
                tokens.len(),
                self.rows
            )));
        }
        let embeds = self.embeds(tokens)?;
        if let (Some(order), Some(kv)) = (reorder, self.decoder_kv.as_mut()) {
            if order.iter().enumerate().any(|(i, &r)| i != r) {
                for pair in kv.iter_mut() {
                    for t in pair.iter_mut() {
                        *t = graphs::gather_rows(t, order).map_err(|e| ModelError::Run {
                            path: self.model.decoder.path.clone(),
                            reason: e.to_string(),
                        })?;
                    }
                }
            }
        }
        let first = self.decoder_kv.is_none();
        let merged = self.model.layout == DecoderLayout::Merged;
        let graph_is_with_past = !first && !merged;
        let use_cache = if merged {
            Some(
                Tensor::from_array((vec![1i64], vec![!first]))
                    .map_err(|e| self.model.decoder.run_error(e))?
                    .into_dyn(),
            )
        } else {
            None
        };
        let empty = if merged && first {
            Some(self.empty_kv()?)
        } else {
            None
        };

        let model = &mut *self.model;
        let graph: &mut Graph = if graph_is_with_past {
            model
                .decoder_with_past
                .as_mut()
                .ok_or_else(|| ModelError::Input("split layout without decoder_with_past".into()))?
        } else {
            &mut model.decoder
        };
        let declares_hidden = graph.input("encoder_hidden_states").is_some();
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
            ("encoder_attention_mask".into(), (&self.mask).into()),
            ("inputs_embeds".into(), embeds.into()),
        ];
        if declares_hidden {
            inputs.push(("encoder_hidden_states".into(), (&self.hidden).into()));
        }
        if let Some(u) = use_cache {
            inputs.push(("use_cache_branch".into(), u.into()));
        }
        let wants_past = merged || !first;
        if wants_past {
            for (i, layer) in model.kv.iter().enumerate() {
                for j in 0..2 {
                    match (&self.decoder_kv, &empty) {
                        (Some(kv), _) => {
                            inputs.push((layer.past_decoder[j].clone(), (&kv[i][j]).into()));
                            inputs.push((
                                layer.past_encoder[j].clone(),
                                (&self.encoder_kv[i][j]).into(),
                            ));
                        }
                        (None, Some(e)) => {
                            inputs.push((layer.past_decoder[j].clone(), e.into()));
                            inputs.push((layer.past_encoder[j].clone(), e.into()));
                        }
                        (None, None) => {}
                    }
                }
            }
        }
        let path = graph.path.clone();
        let run_err = |e: ort::Error| ModelError::Run {
            path: path.clone(),
            reason: e.to_string(),
        };
        let start = Instant::now();
        let out = graph.session.run(inputs);
        let elapsed = start.elapsed();
        let mut out = out.map_err(run_err)?;
        let logits = out.remove("logits").ok_or_else(|| ModelError::Run {
            path: path.clone(),
            reason: "no output logits".into(),
        })?;
        let mut new_dec = Vec::with_capacity(model.kv.len());
        let mut new_enc = Vec::new();
        for layer in &model.kv {
            let take = |out: &mut ort::session::SessionOutputs<'_>, name: &str| {
                out.remove(name).ok_or_else(|| ModelError::Run {
                    path: path.clone(),
                    reason: format!("no output {name}"),
                })
            };
            new_dec.push([
                take(&mut out, &layer.present_decoder[0])?,
                take(&mut out, &layer.present_decoder[1])?,
            ]);
            if first {
                // The cross-attention cache is computed once; later steps'
                // present.*.encoder.* (empty constants in the merged graph)
                // are never fed back.
                new_enc.push([
                    take(&mut out, &layer.present_encoder[0])?,
                    take(&mut out, &layer.present_encoder[1])?,
                ]);
            }
        }
        drop(out);
        model.session_time += elapsed;
        if first {
            self.encoder_kv = new_enc;
        }
        self.decoder_kv = Some(new_dec);
        self.steps += 1;

        let (shape, data) = graphs::read_f32(&logits).map_err(run_err)?;
        let (rows, t, v) = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
        if rows != self.rows || v != model.vocab_size || t == 0 {
            return Err(ModelError::Run {
                path,
                reason: format!(
                    "logits of shape {shape:?}; expected [{}, t, {}]",
                    self.rows, model.vocab_size
                ),
            });
        }
        let mut last = Vec::with_capacity(rows * v);
        for r in 0..rows {
            let start = (r * t + t - 1) * v;
            last.extend_from_slice(&data[start..start + v]);
        }
        Ok(last)
    }
}
