//! Loading a Florence-2 model directory: the configuration, tokenizer and
//! graph files, one session per graph on the chosen backend (with the
//! TensorRT engine manifest's settings where there is one), and the graph
//! contract checked by name before anything runs (DESIGN.md §3).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ort::value::TensorElementType;

use super::{Florence2, KvLayer};
use crate::florence2::config::{Florence2Config, GenerationConfig, SequenceLimit};
use crate::florence2::graphs::{self, DecoderLayout, FloatType, Graph, GraphFiles, Variant, INT64};
use crate::florence2::tokenizer::FlorenceTokenizer;
use crate::florence2::ModelError;
use crate::runtime::device::{Placement, RowGather};
use crate::runtime::{self, Backend, SessionOptions};

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
    pub engine_manifest: Option<runtime::tensorrt::EngineManifest>,
    /// TensorRT FP16 kernels (LayerNorm kept in FP32).
    pub tensorrt_fp16: bool,
    /// Where compiled CUDA kernels are cached (GPU backends of a build with
    /// the `cuda` feature). `None`: `kernels/` under `engine_cache_dir`, or
    /// under the system's temporary directory.
    pub kernel_cache_dir: Option<PathBuf>,
    /// GPU backends: the device memory limit of each session's arena and
    /// TensorRT workspace (`model.gpu_memory_limit_mb`); `None`: no limit.
    pub gpu_memory_limit: Option<usize>,
    /// CUDA TF32 maths (default on); tests comparing tokens with the CPU
    /// turn it off.
    pub cuda_tf32: bool,
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
            gpu_memory_limit: None,
            cuda_tf32: true,
        }
    }
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
        let config = Florence2Config::from_file(&config_path)?;
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
        let mut backend = runtime::choose_backend(opts.backend, rt.providers)?;
        if opts.engine_manifest.is_none() {
            backend = runtime::without_engines(backend, opts.backend, rt.providers)?;
        }
        tracing::info!(backend = %backend.backend, reason = %backend.reason, "Inference backend chosen.");
        let session_options = SessionOptions {
            backend: backend.backend,
            intra_threads: opts.intra_threads,
            tensorrt_fp16: opts.tensorrt_fp16,
            engine_cache_dir: opts.engine_cache_dir.clone(),
            gpu_memory_limit: opts.gpu_memory_limit,
            cuda_tf32: opts.cuda_tf32,
        };
        use runtime::tensorrt::EngineGraph;
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
        let sequence_limit = sequence_limit(dir, vision.output("image_features"))?;
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
            sequence_limit,
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
}

/// The encoder's sequence bound from the model directory. Where the vision
/// graph fixes how many tokens it produces per image, that number is the
/// one the encoder sees, and it wins over preprocessor_config.json.
fn sequence_limit(
    dir: &Path,
    image_features: Option<graphs::TensorSpec>,
) -> Result<Option<SequenceLimit>, ModelError> {
    let Some(mut limit) = SequenceLimit::from_dir(dir)? else {
        tracing::warn!(
            model = %dir.display(),
            "config.json declares no max_position_embeddings or preprocessor_config.json no \
             image_seq_length: prompt lengths are not checked before batching."
        );
        return Ok(None);
    };
    let fixed = image_features
        .and_then(|spec| spec.dims.get(1).copied())
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0);
    if let Some(n) = fixed.filter(|&n| n != limit.image_tokens) {
        tracing::warn!(
            image_seq_length = limit.image_tokens,
            graph_image_tokens = n,
            "preprocessor_config.json's image_seq_length differs from the vision encoder's \
             output; the graph's count is used for the prompt limit."
        );
        limit.image_tokens = n;
    }
    Ok(Some(limit))
}
