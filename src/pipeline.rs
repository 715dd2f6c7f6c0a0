//! The frame → result pipeline: preprocess → prompt → generate → decode →
//! post-process, batched. It joins the stages — the model
//! ([`crate::florence2`]) knows nothing of pre- or post-processing, and
//! post-processing nothing of the model. Used by `florence-edge infer`,
//! `bench` and the daemon's inference thread.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

pub use crate::florence2::Decoding;
use crate::florence2::{Florence2, LoadOptions, ModelError, Pixels, StageTimings, Task, TaskInput};
use crate::postprocess::loc_ids::{parse_location_tokens, LocationParse, SequenceInfo, TokenBatch};
use crate::postprocess::{self, GeneratedSequence, ImageSize, Route, RouteCounts};
use crate::preprocess::{ImageProcessorConfig, Preprocessor, RgbFrame};

/// How the generated text of `task` is turned into a result.
pub fn parse_kind(task: Task) -> postprocess::ParseKind {
    use postprocess::ParseKind;
    match task {
        Task::Caption
        | Task::DetailedCaption
        | Task::MoreDetailedCaption
        | Task::Ocr
        | Task::RegionToCategory
        | Task::RegionToDescription
        | Task::RegionToOcr => ParseKind::PureText,
        Task::ObjectDetection | Task::DenseRegionCaption => ParseKind::DescriptionWithBboxes,
        Task::RegionProposal => ParseKind::Bboxes,
        Task::OcrWithRegion => ParseKind::Ocr,
        Task::CaptionToPhraseGrounding => ParseKind::PhraseGrounding,
        Task::ReferringExpressionSegmentation | Task::RegionToSegmentation => ParseKind::Polygons,
        Task::OpenVocabularyDetection => ParseKind::DescriptionWithBboxesOrPolygons,
    }
}

/// A region given in pixels, written as the four location tokens the region
/// tasks take as input (the quantization rule lives in
/// [`postprocess::LocationBins`]: `floor(v * 1000 / size)` clamped to the
/// last bin).
pub fn region_tokens(box_xyxy: [f64; 4], width: u32, height: u32) -> Result<String, ModelError> {
    let [x1, y1, x2, y2] = box_xyxy;
    postprocess::LocationBins::from_pixel_box(x1, y1, x2, y2, ImageSize { width, height })
        .map(|bins| bins.prompt())
        .map_err(|e| {
            ModelError::Region(format!(
                "region {x1},{y1},{x2},{y2} of the {width}x{height} image: {e}"
            ))
        })
}

/// What to ask about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    pub task: Task,
    /// Free text for the tasks that take it.
    pub text: Option<String>,
    /// A region in pixels (x1, y1, x2, y2) for the region tasks.
    pub region: Option<[f64; 4]>,
}

impl TaskRequest {
    pub fn new(task: Task) -> Self {
        Self {
            task,
            text: None,
            region: None,
        }
    }

    /// The text input as it goes into the prompt (location tokens for a
    /// region), checked against what the task takes.
    pub fn prompt_input(&self, width: u32, height: u32) -> Result<Option<String>, ModelError> {
        match self.task.input() {
            TaskInput::None => Ok(None),
            TaskInput::Text => match &self.text {
                Some(t) if !t.trim().is_empty() => Ok(Some(t.clone())),
                _ => Err(ModelError::Input(format!(
                    "task {} needs a text input (--text)",
                    self.task
                ))),
            },
            TaskInput::Region => match (&self.region, &self.text) {
                (Some(r), _) => region_tokens(*r, width, height).map(Some),
                // Location tokens given directly as text are accepted too.
                (None, Some(t)) if t.trim_start().starts_with("<loc_") => Ok(Some(t.clone())),
                _ => Err(ModelError::Input(format!(
                    "task {} needs a region (--region x1,y1,x2,y2 in pixels)",
                    self.task
                ))),
            },
        }
    }
}

/// The result for one image and task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub prompt: String,
    pub text_input: Option<String>,
    pub image_size: ImageSize,
    pub token_ids: Vec<i64>,
    pub raw_text: String,
    /// Hugging Face's shape, under the task token, plus normalized
    /// coordinates.
    pub result: serde_json::Value,
    pub batch_size: usize,
    pub timings: Timings,
}

/// Milliseconds per stage. Model stages are shared by the whole batch.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    #[serde(flatten)]
    pub model: StageTimings,
    pub postprocess_ms: f64,
}

pub struct Pipeline {
    pub model: Florence2,
    preprocessor: Preprocessor,
    pixels: Vec<f32>,
    pixel_path: PixelPath,
    location_path: LocationPath,
    routes: RouteCounts,
    /// TensorRT: the longest prompt (tokens, BOS and EOS included) the
    /// engines' optimization profiles take; a longer one would fail inside
    /// TensorRT with a shape error.
    max_prompt_tokens: Option<usize>,
}

/// How location tokens in the generated ids become coordinates.
enum LocationPath {
    /// The CPU twin of the location-token kernel finds every `<loc_N>` id
    /// in the batch; labels are decoded from the spans between them
    /// ([`postprocess::post_process_ids`], equal to the text parser).
    Ids { loc0: i64 },
    /// The location-token kernel does it on the GPU.
    #[cfg(feature = "cuda")]
    Kernel {
        loc0: i64,
        parser: Box<crate::gpu::GpuLocationParser>,
    },
    /// The tokenizer's `<loc_N>` ids are not one contiguous range, which
    /// the id parsers need: the decoded text is parsed instead.
    Text,
}

impl LocationPath {
    fn loc0(&self) -> Option<i64> {
        match *self {
            LocationPath::Ids { loc0 } => Some(loc0),
            #[cfg(feature = "cuda")]
            LocationPath::Kernel { loc0, .. } => Some(loc0),
            LocationPath::Text => None,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            LocationPath::Ids { .. } => "location tokens from the generated ids (CPU)",
            #[cfg(feature = "cuda")]
            LocationPath::Kernel { .. } => "location tokens from the generated ids (CUDA kernel)",
            LocationPath::Text => "location tokens parsed from the decoded text",
        }
    }
}

/// How frames become the vision encoder's input.
enum PixelPath {
    /// CPU preprocessing straight into a tensor the vision session
    /// allocated (float32 graphs with a fixed input size on the CPU
    /// backend): no intermediate copy.
    HostTensor,
    /// CPU preprocessing into a float buffer that the model converts and
    /// ONNX Runtime copies (float16 graphs on the CPU, symbolic input
    /// sizes, and the GPU backends of a build without the `cuda` feature).
    HostFloats,
    /// The CUDA preprocessing kernel writes into a tensor allocated in GPU
    /// memory by the vision session, which reads it there.
    #[cfg(feature = "cuda")]
    Kernel(Box<crate::gpu::GpuPreprocessor>),
}

impl PixelPath {
    /// Named in the start-up log.
    fn describe(&self) -> &'static str {
        match self {
            PixelPath::HostTensor => "CPU preprocessing into the vision encoder's input tensor",
            PixelPath::HostFloats => "CPU preprocessing, copied to the vision encoder's input",
            #[cfg(feature = "cuda")]
            PixelPath::Kernel(_) => "CUDA preprocessing kernel into GPU memory",
        }
    }
}

/// The frame and location paths through the CUDA kernels, for a model
/// whose tensors live in GPU memory; `None`s on the CPU backend (and for
/// locations when `loc0` is `None`: the tokenizer's location ids are not
/// contiguous). A GPU backend whose kernels cannot start is an error
/// naming why (no driver, no NVRTC, compile failure), never a quiet switch
/// to the CPU paths. Each kernel holds its CUDA context (cudarc
/// reference-counts it), so nothing else keeps the context alive.
#[cfg(feature = "cuda")]
fn kernel_paths(
    opts: &LoadOptions,
    model: &Florence2,
    preprocessor: &Preprocessor,
    loc0: Option<i64>,
) -> Result<(Option<PixelPath>, Option<LocationPath>), ModelError> {
    use crate::runtime::Backend;
    if !matches!(
        model.placement().backend(),
        Backend::Cuda | Backend::TensorRt
    ) {
        return Ok((None, None));
    }
    let cache = kernel_cache_dir(opts);
    let gpu = crate::gpu::GpuContext::new(crate::runtime::device::CUDA_DEVICE_ID as usize, &cache)
        .map_err(|e| ModelError::Gpu(format!("{e} (backend {})", model.placement().backend())))?;
    // The kernel writes into a device tensor of the graph's fixed input
    // size; a graph that declares a symbolic height/width gets its frames
    // preprocessed on the CPU instead (decided here, at load, rather than
    // failing every batch). Not verified on a GPU.
    let pixels = if model.pixel_size.is_none() {
        tracing::warn!(
            graph = %model.vision_path().display(),
            "The vision encoder declares a symbolic image size: frames are preprocessed on the \
             CPU and copied to the GPU (the CUDA preprocessing kernel needs a fixed size)."
        );
        PixelPath::HostFloats
    } else {
        PixelPath::Kernel(Box::new(
            crate::gpu::GpuPreprocessor::new(
                &gpu,
                preprocessor,
                crate::preprocess::YuvMatrix::Bt709Limited,
            )
            .map_err(|e| ModelError::Gpu(e.to_string()))?,
        ))
    };
    let locations = loc0
        .map(|loc0| {
            crate::gpu::GpuLocationParser::new(&gpu, loc0).map(|parser| LocationPath::Kernel {
                loc0,
                parser: Box::new(parser),
            })
        })
        .transpose()
        .map_err(|e| ModelError::Gpu(e.to_string()))?;
    tracing::info!(
        gpu = %gpu.device().name,
        kernel_cache = %cache.display(),
        "CUDA kernels ready."
    );
    Ok((Some(pixels), locations))
}

/// Without the `cuda` feature there are no kernel paths.
#[cfg(not(feature = "cuda"))]
fn kernel_paths(
    _opts: &LoadOptions,
    _model: &Florence2,
    _preprocessor: &Preprocessor,
    _loc0: Option<i64>,
) -> Result<(Option<PixelPath>, Option<LocationPath>), ModelError> {
    Ok((None, None))
}

#[cfg(feature = "cuda")]
fn kernel_cache_dir(opts: &LoadOptions) -> std::path::PathBuf {
    if let Some(d) = &opts.kernel_cache_dir {
        return d.clone();
    }
    if let Ok(d) = std::env::var("FLORENCE_EDGE_KERNEL_CACHE") {
        if !d.is_empty() {
            return d.into();
        }
    }
    match &opts.engine_cache_dir {
        Some(d) => d.join("kernels"),
        None => std::env::temp_dir().join("florence-edge-kernels"),
    }
}

impl Pipeline {
    pub fn load(opts: &LoadOptions) -> Result<Self, ModelError> {
        let model = Florence2::load(opts)?;
        let pp_path = opts.dir.join("preprocessor_config.json");
        let pp_config =
            ImageProcessorConfig::from_json_file(&pp_path).map_err(|e| ModelError::File {
                path: pp_path.clone(),
                problem: e.to_string(),
            })?;
        if let Some((h, w)) = model.pixel_size {
            if (h as u32, w as u32) != pp_config.size {
                return Err(ModelError::File {
                    path: pp_path,
                    problem: format!(
                        "says size {:?} (height, width) but the vision encoder takes {h}x{w}",
                        pp_config.size
                    ),
                });
            }
        }
        let preprocessor = Preprocessor::new(pp_config)
            .map_err(|e| ModelError::File {
                path: pp_path,
                problem: e.to_string(),
            })?
            .with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
        // The id parsers need the `<loc_N>` ids as one contiguous range.
        let loc0 = match model.tokenizer.location_range() {
            (loc0, true) => Some(loc0),
            (_, false) => None,
        };
        let (kernel_pixels, kernel_locations) = kernel_paths(opts, &model, &preprocessor, loc0)?;
        let pixel_path = kernel_pixels.unwrap_or_else(|| choose_pixel_path(&model));
        let location_path = kernel_locations
            .unwrap_or(loc0.map_or(LocationPath::Text, |loc0| LocationPath::Ids { loc0 }));
        let max_prompt_tokens = opts
            .engine_manifest
            .as_ref()
            .filter(|_| model.placement().backend() == crate::runtime::Backend::TensorRt)
            .map(|m| m.fingerprint.profiles.prompt_tokens.max as usize);
        tracing::info!(
            pixels = pixel_path.describe(),
            locations = location_path.describe(),
            "Frame and result paths chosen."
        );
        Ok(Self {
            model,
            preprocessor,
            pixels: Vec::new(),
            pixel_path,
            location_path,
            routes: RouteCounts::default(),
            max_prompt_tokens,
        })
    }

    /// Every location token of the batch's sequences, found by the CPU twin
    /// or the kernel; `None` on the text path.
    fn locate(
        &mut self,
        seqs: &[Vec<i64>],
        items: &[(RgbFrame<'_>, TaskRequest)],
    ) -> Result<Option<LocationParse>, ModelError> {
        let Some(loc0) = self.location_path.loc0() else {
            return Ok(None);
        };
        let max_len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if max_len == 0 {
            return Ok(None);
        }
        let pad = self.model.generation.pad_token_id;
        let mut ids = Vec::with_capacity(seqs.len() * max_len);
        let mut sequences = Vec::with_capacity(seqs.len());
        for (seq, (frame, req)) in seqs.iter().zip(items) {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(pad, max_len - seq.len()));
            sequences.push(SequenceInfo::new(
                frame.width() as f32,
                frame.height() as f32,
                seq.len() as u32,
                postprocess::location_grouping(parse_kind(req.task)),
            ));
        }
        let batch = TokenBatch {
            ids: &ids,
            max_len,
            sequences: &sequences,
        };
        match &mut self.location_path {
            #[cfg(feature = "cuda")]
            LocationPath::Kernel { parser, .. } => parser
                .parse(&batch)
                .map(Some)
                .map_err(|e| ModelError::Gpu(format!("location-token kernel: {e}"))),
            _ => parse_location_tokens(&batch, loc0)
                .map(Some)
                .map_err(|e| ModelError::Input(format!("location tokens: {e}"))),
        }
    }

    /// The prompt for `req` on a `width`×`height` frame, tokenized: the
    /// text, checked against what the task takes, against the model's
    /// position embeddings (image tokens + prompt, see
    /// [`crate::florence2::SequenceLimit`]) and, on TensorRT, against the
    /// engines' longest prompt. The daemon refuses an item whose request
    /// fails here on its own, before batching it.
    pub fn prompt_ids(
        &self,
        req: &TaskRequest,
        width: u32,
        height: u32,
    ) -> Result<(String, Option<String>, Vec<i64>), ModelError> {
        let input = req.prompt_input(width, height)?;
        let prompt = req.task.prompt(input.as_deref());
        let ids = self.model.tokenizer.encode_prompt(&prompt)?;
        if let Some(limit) = &self.model.sequence_limit {
            limit.check(req.task, ids.len())?;
        }
        check_prompt_length(req.task, ids.len(), self.max_prompt_tokens)?;
        Ok((prompt, input, ids))
    }

    /// How location tokens become coordinates (see the start-up log).
    pub fn location_path(&self) -> &'static str {
        self.location_path.describe()
    }

    /// Sequences post-processed from their ids, and those that had to be
    /// parsed as text because their word pieces spell a location token.
    pub fn route_counts(&self) -> RouteCounts {
        self.routes
    }

    /// How frames reach the vision encoder (see the start-up log).
    pub fn pixel_path(&self) -> &'static str {
        self.pixel_path.describe()
    }

    /// Run one batch: one frame and one request per item. Items may ask for
    /// different tasks; their prompts are padded and masked together.
    ///
    /// Items that view the same image in memory (see [`distinct_frames`])
    /// are preprocessed and vision-encoded once: two tasks of one camera in
    /// a batch cost one vision-encoder row, not two. Every item still gets
    /// its own encoder and decoder row, so its tokens are those it gets
    /// alone.
    pub fn run(
        &mut self,
        items: &[(RgbFrame<'_>, TaskRequest)],
        decoding: Decoding,
    ) -> Result<Vec<TaskResult>, ModelError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let t0 = Instant::now();
        let (frames, image_of) = distinct_frames(items.iter().map(|(f, _)| *f));
        let mut prompts = Vec::with_capacity(items.len());
        let mut prompt_texts = Vec::with_capacity(items.len());
        let mut inputs = Vec::with_capacity(items.len());
        for (frame, req) in items {
            let (prompt, input, ids) = self.prompt_ids(req, frame.width(), frame.height())?;
            prompts.push(ids);
            prompt_texts.push(prompt);
            inputs.push(input);
        }
        let pixels = prepare_pixels(
            &mut self.pixel_path,
            &mut self.preprocessor,
            &self.model,
            &mut self.pixels,
            &frames,
        )?;
        let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (seqs, model_timings) = self.model.generate_shared(
            pixels,
            &image_of,
            &prompts,
            decoding.strategy,
            decoding.max_new_tokens,
        )?;
        let t1 = Instant::now();
        let locations = self.locate(&seqs, items)?;
        let mut out = Vec::with_capacity(items.len());
        for (index, (((frame, req), seq), (prompt, input))) in items
            .iter()
            .zip(seqs)
            .zip(prompt_texts.into_iter().zip(inputs))
            .enumerate()
        {
            let size = ImageSize {
                width: frame.width(),
                height: frame.height(),
            };
            let post_err = |e: &dyn std::fmt::Display| {
                ModelError::Input(format!("post-processing {}: {e}", req.task))
            };
            let (raw_text, parsed) = match (&locations, self.location_path.loc0()) {
                (Some(parse), Some(loc0)) => {
                    let tokenizer = &self.model.tokenizer;
                    let stitched = postprocess::post_process_ids(
                        GeneratedSequence {
                            index,
                            ids: &seq,
                            locations: parse.sequence(index).unwrap_or_default(),
                        },
                        loc0,
                        parse_kind(req.task),
                        size,
                        |span| tokenizer.decode_with_special_tokens(span),
                    )
                    .map_err(|e| post_err(&e))?;
                    self.routes.record(stitched.route);
                    if let Route::Text(reason) = stitched.route {
                        tracing::debug!(task = %req.task, ?reason, "Result parsed from text: its word pieces spell a location token.");
                    }
                    (stitched.decoded_text, stitched.output)
                }
                _ => {
                    let raw_text = self.model.tokenizer.decode_with_special_tokens(&seq)?;
                    let parsed = postprocess::post_process(&raw_text, parse_kind(req.task), size)
                        .map_err(|e| post_err(&e))?;
                    (raw_text, parsed)
                }
            };
            let inner = serde_json::to_value(&parsed).map_err(|e| {
                ModelError::Input(format!("serializing the {} result: {e}", req.task))
            })?;
            let mut result = serde_json::Map::new();
            result.insert(req.task.token().to_string(), inner);
            out.push(TaskResult {
                task: req.task.token().to_string(),
                prompt,
                text_input: input,
                image_size: size,
                token_ids: seq,
                raw_text,
                result: serde_json::Value::Object(result),
                batch_size: items.len(),
                timings: Timings {
                    preprocess_ms,
                    model: model_timings,
                    postprocess_ms: 0.0,
                },
            });
        }
        let post_ms = t1.elapsed().as_secs_f64() * 1e3;
        for r in &mut out {
            r.timings.postprocess_ms = post_ms;
        }
        Ok(out)
    }
}

/// The frame path when there are no CUDA kernels.
fn choose_pixel_path(model: &Florence2) -> PixelPath {
    let on_host = model.placement().backend() == crate::runtime::Backend::Cpu;
    if !on_host {
        tracing::warn!(
            backend = %model.placement().backend(),
            "This build has no CUDA kernels (built without the `cuda` feature): frames are \
             preprocessed on the CPU and copied to the GPU, location tokens parsed on the CPU."
        );
    }
    let f32_graph = model.pixel_type() == crate::florence2::graphs::FloatType::F32;
    if on_host && f32_graph && model.pixel_size.is_some() {
        PixelPath::HostTensor
    } else {
        PixelPath::HostFloats
    }
}

/// Preprocesses the distinct frames of a batch into the vision
/// encoder's input, the way [`PixelPath`] says.
fn prepare_pixels<'p>(
    pixel_path: &mut PixelPath,
    preprocessor: &mut Preprocessor,
    model: &Florence2,
    buffer: &'p mut Vec<f32>,
    frames: &[RgbFrame<'_>],
) -> Result<Pixels<'p>, ModelError> {
    let n = preprocessor.image_len();
    let (h, w) = preprocessor.config().size;
    let shape = [frames.len(), 3, h as usize, w as usize];
    match pixel_path {
        PixelPath::HostFloats => {
            buffer.resize(frames.len() * n, 0.0);
            preprocessor
                .preprocess_batch_into(frames, buffer)
                .map_err(|e| ModelError::Input(e.to_string()))?;
            Ok(Pixels::Host {
                values: buffer,
                shape,
            })
        }
        PixelPath::HostTensor => {
            let mut t = model.pixel_tensor(frames.len())?;
            let (_, data) = t
                .try_extract_tensor_mut::<f32>()
                .map_err(|e| ModelError::Input(format!("pixel tensor: {e}")))?;
            preprocessor
                .preprocess_batch_into(frames, data)
                .map_err(|e| ModelError::Input(e.to_string()))?;
            Ok(Pixels::Tensor(t.into_dyn()))
        }
        #[cfg(feature = "cuda")]
        PixelPath::Kernel(kernel) => {
            let mut t = model.pixel_tensor(frames.len())?;
            let gpu_frames: Vec<crate::gpu::GpuFrame<'_>> = frames
                .iter()
                .map(|f| crate::gpu::GpuFrame::Rgb {
                    data: f.bytes(),
                    width: f.width(),
                    height: f.height(),
                    stride: f.stride_bytes() as u32,
                })
                .collect();
            let len = kernel.output_len(frames.len());
            let out = t.data_ptr_mut() as u64;
            let gpu_err = |e: crate::gpu::GpuError| ModelError::Gpu(e.to_string());
            // SAFETY: `t` was allocated by the vision session in GPU
            // memory of the device the kernels' context is on (device
            // 0, the primary context both ONNX Runtime and cudarc use)
            // with `len` elements of the graph's element type, and
            // nothing else uses it until the stream is synchronised
            // below.
            unsafe {
                match model.pixel_type() {
                    crate::florence2::graphs::FloatType::F32 => {
                        kernel.preprocess_into_raw::<f32>(&gpu_frames, out, len)
                    }
                    crate::florence2::graphs::FloatType::F16 => {
                        kernel.preprocess_into_raw::<half::f16>(&gpu_frames, out, len)
                    }
                }
            }
            .map_err(gpu_err)?;
            // ONNX Runtime runs on its own stream: the pixels must be
            // written before the vision encoder reads them.
            kernel.synchronize().map_err(gpu_err)?;
            Ok(Pixels::Tensor(t.into_dyn()))
        }
    }
}

/// A prompt of `tokens` tokens against the engines' bound, if any.
fn check_prompt_length(task: Task, tokens: usize, max: Option<usize>) -> Result<(), ModelError> {
    match max {
        Some(max) if tokens > max => Err(ModelError::Input(format!(
            "the {task} prompt is {tokens} tokens; the TensorRT engines take at most {max} \
             (their optimization profile); shorten the task's text"
        ))),
        _ => Ok(()),
    }
}

/// The distinct images among `frames`, in order of first appearance, and
/// for each frame the index of its image. Two views are the same image when
/// they start at the same address with the same width, height and row
/// stride: they then read the same bytes (a view reads nothing past its
/// last row, so the buffer's length beyond it does not matter). This is
/// the case of jobs built from one `Arc<Frame>`; equal pixels in different
/// buffers are not looked for, as comparing them would cost a pass over
/// every frame.
pub fn distinct_frames<'a>(
    frames: impl IntoIterator<Item = RgbFrame<'a>>,
) -> (Vec<RgbFrame<'a>>, Vec<usize>) {
    let mut seen: HashMap<(usize, u32, u32, usize), usize> = HashMap::new();
    let mut distinct = Vec::new();
    let mut image_of = Vec::new();
    for f in frames {
        // A frame has at least one row (RgbFrame::new refuses empty ones),
        // so row 0 starts at the view's first byte.
        let key = (
            f.row(0).as_ptr() as usize,
            f.width(),
            f.height(),
            f.stride_bytes(),
        );
        let i = *seen.entry(key).or_insert_with(|| {
            distinct.push(f);
            distinct.len() - 1
        });
        image_of.push(i);
    }
    (distinct, image_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_tokens_validate_the_box() {
        assert_eq!(
            region_tokens([10.0, 20.0, 320.0, 240.0], 640, 480).unwrap(),
            "<loc_15><loc_41><loc_500><loc_500>"
        );
        assert!(region_tokens([30.0, 0.0, 10.0, 5.0], 640, 480).is_err());
        let e = region_tokens([0.0, 0.0, 700.0, 5.0], 640, 480)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("640x480") && e.contains("x2 = 700") && e.contains("outside the image"),
            "{e}"
        );
    }

    #[test]
    fn prompts_longer_than_the_tensorrt_profile_are_refused_by_length() {
        assert!(check_prompt_length(Task::Caption, 500, None).is_ok());
        assert!(check_prompt_length(Task::Caption, 64, Some(64)).is_ok());
        let e = check_prompt_length(Task::CaptionToPhraseGrounding, 65, Some(64))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("65 tokens") && e.contains("at most 64") && e.contains("PHRASE_GROUNDING"),
            "{e}"
        );
    }
}
