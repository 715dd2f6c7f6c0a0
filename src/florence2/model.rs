//! Florence-2 on ONNX Runtime: `encode_image` (vision encoder), `encode`
//! (embed the prompt, concatenate with the image features, run the encoder)
//! and `generate` (decoder loop with KV cache), following the reference
//! implementation step by step (DESIGN.md §3).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::memory::Allocator;
use ort::session::IoBinding;
use ort::value::{DynValue, Tensor, TensorElementType};

use super::config::{GenerationConfig, ModelConfig};
use super::generate::{self, DecoderStep, SearchConfig, Strategy};
use super::graphs::{self, DecoderLayout, FloatType, Graph, GraphFiles, Variant, INT64};
use super::tokenizer::FlorenceTokenizer;
use super::ModelError;
use crate::runtime::device::{Placement, RowGather};
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
    /// Where compiled CUDA kernels are cached (GPU backends of a build with
    /// the `cuda` feature). `None`: `kernels/` under `engine_cache_dir`, or
    /// under the system's temporary directory.
    pub kernel_cache_dir: Option<PathBuf>,
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
            kernel_cache_dir: None,
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
    /// Where the cache and hidden states stay between calls.
    placement: Placement,
    /// Beam reorders and per-beam expansion, done where the rows are.
    gather: RowGather,
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
        let placement = Placement::for_backend(backend.backend)?;
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
            gather: RowGather::new(rt, placement.clone(), opts.intra_threads),
            placement,
        })
    }

    /// Where this model keeps tensors between calls.
    pub fn placement(&self) -> &Placement {
        &self.placement
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

/// The decoder with its KV cache, one step at a time, through IO bindings:
/// the attention mask and the encoder hidden state are bound once, the
/// cache outputs of each step are bound to the placement's device memory
/// and become the next step's inputs there, and only the logits come back
/// to the host.
struct OrtStep<'m> {
    model: &'m mut Florence2,
    rows: usize,
    /// Binding of the decoder: the first step, and every step of the
    /// merged layout.
    first: IoBinding,
    /// Binding of decoder_with_past: the later steps of the split layout.
    later: Option<IoBinding>,
    /// Self-attention cache, per layer (key, value); `None` before step 0.
    decoder_kv: Option<Vec<[DynValue; 2]>>,
    steps: usize,
}

impl<'m> OrtStep<'m> {
    fn new(
        model: &'m mut Florence2,
        hidden: &DynValue,
        mask: &DynValue,
        rows: usize,
    ) -> Result<Self, ModelError> {
        let bind_static = |graph: &Graph| -> Result<IoBinding, ModelError> {
            let mut b = graph
                .session
                .create_binding()
                .map_err(|e| graph.run_error(e))?;
            b.bind_input("encoder_attention_mask", mask)
                .map_err(|e| graph.run_error(e))?;
            if graph.input("encoder_hidden_states").is_some() {
                b.bind_input("encoder_hidden_states", hidden)
                    .map_err(|e| graph.run_error(e))?;
            }
            Ok(b)
        };
        let first = bind_static(&model.decoder)?;
        let later = match (&model.decoder_with_past, model.layout) {
            (Some(g), DecoderLayout::Split) => Some(bind_static(g)?),
            (None, DecoderLayout::Split) => {
                return Err(ModelError::Input(
                    "split layout without decoder_with_past".into(),
                ))
            }
            (_, DecoderLayout::Merged) => None,
        };
        Ok(Self {
            model,
            rows,
            first,
            later,
            decoder_kv: None,
            steps: 0,
        })
    }

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
                        *t = self.model.gather.gather(t, order)?;
                    }
                }
            }
        }
        let first = self.decoder_kv.is_none();
        let merged = self.model.layout == DecoderLayout::Merged;
        let empty = if merged && first {
            Some(self.empty_kv()?)
        } else {
            None
        };

        let model = &mut *self.model;
        let (graph, binding): (&mut Graph, &mut IoBinding) = if first || merged {
            (&mut model.decoder, &mut self.first)
        } else {
            match (model.decoder_with_past.as_mut(), self.later.as_mut()) {
                (Some(g), Some(b)) => (g, b),
                _ => {
                    return Err(ModelError::Input(
                        "split layout without decoder_with_past".into(),
                    ))
                }
            }
        };
        let path = graph.path.clone();
        let run_err = |e: ort::Error| ModelError::Run {
            path: path.clone(),
            reason: e.to_string(),
        };
        binding
            .bind_input("inputs_embeds", &embeds)
            .map_err(run_err)?;
        if merged {
            let use_cache = Tensor::from_array((vec![1i64], vec![!first])).map_err(run_err)?;
            binding
                .bind_input("use_cache_branch", &use_cache)
                .map_err(run_err)?;
        }
        for (i, layer) in model.kv.iter().enumerate() {
            for j in 0..2 {
                match (&self.decoder_kv, &empty) {
                    (Some(kv), _) => binding.bind_input(&layer.past_decoder[j], &kv[i][j]),
                    // The merged graph's first step takes an empty cache;
                    // its cross-attention cache is bound after the step.
                    (None, Some(e)) => binding
                        .bind_input(&layer.past_decoder[j], e)
                        .and_then(|_| binding.bind_input(&layer.past_encoder[j], e)),
                    (None, None) => Ok(()),
                }
                .map_err(run_err)?;
            }
        }
        // Outputs are bound afresh every step: a bound output keeps the
        // previous step's tensor, which ONNX Runtime would otherwise write
        // into — and that tensor is this step's past.
        binding.clear_outputs();
        let device = model.placement.device();
        binding
            .bind_output_to_device("logits", model.placement.host())
            .map_err(run_err)?;
        for layer in &model.kv {
            for name in &layer.present_decoder {
                binding
                    .bind_output_to_device(name, device)
                    .map_err(run_err)?;
            }
            if first {
                // The cross-attention cache is computed once; later steps'
                // present.*.encoder.* (empty constants in the merged graph)
                // are not fetched.
                for name in &layer.present_encoder {
                    binding
                        .bind_output_to_device(name, device)
                        .map_err(run_err)?;
                }
            }
        }
        let start = Instant::now();
        let out = graph.session.run_binding(binding);
        let elapsed = start.elapsed();
        let mut out = out.map_err(run_err)?;
        let mut take = |name: &str| {
            out.remove(name).ok_or_else(|| ModelError::Run {
                path: path.clone(),
                reason: format!("no output {name}"),
            })
        };
        let logits = take("logits")?;
        let mut new_dec = Vec::with_capacity(model.kv.len());
        let mut new_enc = Vec::new();
        for layer in &model.kv {
            new_dec.push([
                take(&layer.present_decoder[0])?,
                take(&layer.present_decoder[1])?,
            ]);
            if first {
                new_enc.push([
                    take(&layer.present_encoder[0])?,
                    take(&layer.present_encoder[1])?,
                ]);
            }
        }
        drop(out);
        model.session_time += elapsed;
        if first {
            // Bound once, for every later step, where it already lives.
            let later = if merged {
                &mut self.first
            } else {
                self.later.as_mut().ok_or_else(|| {
                    ModelError::Input("split layout without decoder_with_past".into())
                })?
            };
            for (layer, kv) in model.kv.iter().zip(&new_enc) {
                for (name, value) in layer.past_encoder.iter().zip(kv) {
                    later.bind_input(name, value).map_err(run_err)?;
                }
            }
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
