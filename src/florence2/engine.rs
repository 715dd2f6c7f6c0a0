//! One call from frames to results: preprocess → prompt → generate → decode
//! → post-process, batched. Used by `florence-edge infer` and by the daemon.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::model::{Florence2, LoadOptions, StageTimings};
use super::task::{Task, TaskInput};
use super::tokenizer::region_tokens;
use super::{ModelError, Strategy};
use crate::postprocess::{self, ImageSize};
use crate::preprocess::{ImageProcessorConfig, Preprocessor, RgbFrame};

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

/// Decoding settings for a call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoding {
    pub strategy: Strategy,
    pub max_new_tokens: usize,
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

pub struct Engine {
    pub model: Florence2,
    preprocessor: Preprocessor,
    pixels: Vec<f32>,
}

impl Engine {
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
        Ok(Self {
            model,
            preprocessor,
            pixels: Vec::new(),
        })
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
        let n = self.preprocessor.image_len();
        let (frames, image_of) = distinct_frames(items.iter().map(|(f, _)| *f));
        self.pixels.resize(frames.len() * n, 0.0);
        self.preprocessor
            .preprocess_batch_into(&frames, &mut self.pixels)
            .map_err(|e| ModelError::Input(e.to_string()))?;
        let (h, w) = self.preprocessor.config().size;
        let mut prompts = Vec::with_capacity(items.len());
        let mut prompt_texts = Vec::with_capacity(items.len());
        let mut inputs = Vec::with_capacity(items.len());
        for (frame, req) in items {
            let input = req.prompt_input(frame.width(), frame.height())?;
            let prompt = req.task.prompt(input.as_deref());
            prompts.push(self.model.tokenizer.encode_prompt(&prompt)?);
            prompt_texts.push(prompt);
            inputs.push(input);
        }
        let preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        let shape = [frames.len(), 3, h as usize, w as usize];
        let (seqs, model_timings) = self.model.generate_shared(
            &self.pixels,
            shape,
            &image_of,
            &prompts,
            decoding.strategy,
            decoding.max_new_tokens,
        )?;
        let t1 = Instant::now();
        let mut out = Vec::with_capacity(items.len());
        for (((frame, req), seq), (prompt, input)) in items
            .iter()
            .zip(seqs)
            .zip(prompt_texts.into_iter().zip(inputs))
        {
            let raw_text = self.model.tokenizer.decode_with_special_tokens(&seq)?;
            let size = ImageSize {
                width: frame.width(),
                height: frame.height(),
            };
            let parsed = postprocess::post_process(&raw_text, req.task.parse_kind(), size)
                .map_err(|e| ModelError::Input(format!("post-processing {}: {e}", req.task)))?;
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
