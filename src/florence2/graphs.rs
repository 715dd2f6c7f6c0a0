//! The ONNX graphs of a Florence-2 model directory (DESIGN.md §3), opened as
//! ONNX Runtime sessions and checked against the graph contract: every
//! tensor is addressed by name, and names, element types and ranks are
//! verified when the model is loaded, so a wrong file fails at start with
//! the file and the tensor named.

use std::path::{Path, PathBuf};

use half::f16;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::ModelError;
use crate::runtime::{self, OrtRuntime, SessionOptions};

/// Which precision variant of the graphs to load: the file suffix the
/// onnx-community repositories use (`vision_encoder_fp16.onnx`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant(String);

impl Variant {
    pub const ALLOWED: [&'static str; 8] = [
        "fp32",
        "fp16",
        "q4",
        "q4f16",
        "int8",
        "uint8",
        "quantized",
        "bnb4",
    ];

    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let s = s.trim().to_ascii_lowercase();
        if Self::ALLOWED.contains(&s.as_str()) {
            Ok(Self(s))
        } else {
            Err(ModelError::Variant {
                given: s,
                allowed: Self::ALLOWED.join(", "),
            })
        }
    }

    pub fn fp32() -> Self {
        Self("fp32".into())
    }

    /// A float variant (fp32, fp16): what TensorRT builds engines from.
    pub fn is_float(&self) -> bool {
        matches!(self.0.as_str(), "fp32" | "fp16")
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    fn suffix(&self) -> String {
        if self.0 == "fp32" {
            String::new()
        } else {
            format!("_{}", self.0)
        }
    }
}

/// Split decoders (decoder_model + decoder_with_past_model; what TensorRT
/// needs) or the merged graph with its `If` on `use_cache_branch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderLayout {
    Split,
    Merged,
}

/// Paths of the graphs for a variant and decoder layout.
#[derive(Debug, Clone)]
pub struct GraphFiles {
    pub vision_encoder: PathBuf,
    pub embed_tokens: PathBuf,
    pub encoder: PathBuf,
    pub decoder: PathBuf,
    pub decoder_with_past: Option<PathBuf>,
}

impl GraphFiles {
    pub fn resolve(
        dir: &Path,
        variant: &Variant,
        layout: DecoderLayout,
    ) -> Result<Self, ModelError> {
        let onnx = dir.join("onnx");
        let sfx = variant.suffix();
        let pick = |stem: &str| -> Result<PathBuf, ModelError> {
            let p = onnx.join(format!("{stem}{sfx}.onnx"));
            if p.is_file() {
                return Ok(p);
            }
            // Variants often quantize only the big graphs; embed_tokens is
            // then shipped in FP32 only. Fall back to the FP32 file for it
            // alone, and say so.
            let fp32 = onnx.join(format!("{stem}.onnx"));
            if stem == "embed_tokens" && fp32.is_file() {
                tracing::info!(file = %fp32.display(), variant = variant.name(), "No embed_tokens graph for this variant; using the FP32 one.");
                return Ok(fp32);
            }
            Err(ModelError::File {
                path: p,
                problem: format!(
                    "is missing (variant {:?}, decoder layout {:?}); a Florence-2 model directory in the onnx-community layout has onnx/{stem}{sfx}.onnx",
                    variant.name(),
                    layout
                ),
            })
        };
        Ok(match layout {
            DecoderLayout::Split => Self {
                vision_encoder: pick("vision_encoder")?,
                embed_tokens: pick("embed_tokens")?,
                encoder: pick("encoder_model")?,
                decoder: pick("decoder_model")?,
                decoder_with_past: Some(pick("decoder_with_past_model")?),
            },
            DecoderLayout::Merged => Self {
                vision_encoder: pick("vision_encoder")?,
                embed_tokens: pick("embed_tokens")?,
                encoder: pick("encoder_model")?,
                decoder: pick("decoder_model_merged")?,
                decoder_with_past: None,
            },
        })
    }
}

/// Element type of a float tensor at a graph boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
}

/// One opened graph with its declared inputs and outputs.
pub struct Graph {
    pub session: Session,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub ty: TensorElementType,
    /// -1 for a symbolic dimension.
    pub dims: Vec<i64>,
}

fn spec_of(name: &str, vt: &ValueType) -> Option<TensorSpec> {
    match vt {
        ValueType::Tensor { ty, shape, .. } => Some(TensorSpec {
            name: name.to_string(),
            ty: *ty,
            dims: shape.to_vec(),
        }),
        _ => None,
    }
}

impl Graph {
    pub fn open(
        rt: &OrtRuntime,
        path: &Path,
        options: &SessionOptions,
    ) -> Result<Self, ModelError> {
        let session = runtime::open_session(rt, path, options)?;
        Ok(Self {
            session,
            path: path.to_path_buf(),
        })
    }

    /// [`Graph::open`] on TensorRT with the profile and engine cache prefix
    /// the engines were built with.
    pub fn open_tensorrt(
        rt: &OrtRuntime,
        path: &Path,
        options: &SessionOptions,
        tensorrt: &runtime::TensorRtSessionOptions,
    ) -> Result<Self, ModelError> {
        let session = runtime::open_session_with_tensorrt(rt, path, options, tensorrt)?;
        Ok(Self {
            session,
            path: path.to_path_buf(),
        })
    }

    pub fn input(&self, name: &str) -> Option<TensorSpec> {
        self.session
            .inputs()
            .iter()
            .find(|o| o.name() == name)
            .and_then(|o| spec_of(o.name(), o.dtype()))
    }

    pub fn output(&self, name: &str) -> Option<TensorSpec> {
        self.session
            .outputs()
            .iter()
            .find(|o| o.name() == name)
            .and_then(|o| spec_of(o.name(), o.dtype()))
    }

    pub fn input_names(&self) -> Vec<String> {
        self.session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    fn contract(&self, what: &str, name: &str, problem: String) -> ModelError {
        ModelError::Contract {
            path: self.path.clone(),
            tensor: format!("{what} {name:?}"),
            problem,
        }
    }

    fn check(
        &self,
        spec: Option<TensorSpec>,
        what: &str,
        name: &str,
        rank: usize,
        allowed: &[TensorElementType],
    ) -> Result<TensorSpec, ModelError> {
        let names = if what == "input" {
            self.input_names()
        } else {
            self.output_names()
        };
        let spec = spec.ok_or_else(|| {
            self.contract(
                what,
                name,
                format!("is missing; the graph declares {}", names.join(", ")),
            )
        })?;
        if !allowed.contains(&spec.ty) {
            return Err(self.contract(
                what,
                name,
                format!(
                    "has element type {:?}; expected one of {:?}",
                    spec.ty, allowed
                ),
            ));
        }
        if spec.dims.len() != rank {
            return Err(self.contract(
                what,
                name,
                format!(
                    "has rank {} ({:?}); expected rank {rank}",
                    spec.dims.len(),
                    spec.dims
                ),
            ));
        }
        Ok(spec)
    }

    pub fn require_input(
        &self,
        name: &str,
        rank: usize,
        allowed: &[TensorElementType],
    ) -> Result<TensorSpec, ModelError> {
        self.check(self.input(name), "input", name, rank, allowed)
    }

    pub fn require_output(
        &self,
        name: &str,
        rank: usize,
        allowed: &[TensorElementType],
    ) -> Result<TensorSpec, ModelError> {
        self.check(self.output(name), "output", name, rank, allowed)
    }

    pub fn require_float_input(&self, name: &str, rank: usize) -> Result<FloatType, ModelError> {
        float_type(&self.require_input(name, rank, FLOATS)?)
    }

    pub fn require_float_output(&self, name: &str, rank: usize) -> Result<FloatType, ModelError> {
        float_type(&self.require_output(name, rank, FLOATS)?)
    }

    pub fn run_error(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Run {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

pub const FLOATS: &[TensorElementType] = &[TensorElementType::Float32, TensorElementType::Float16];
pub const INT64: &[TensorElementType] = &[TensorElementType::Int64];

fn float_type(spec: &TensorSpec) -> Result<FloatType, ModelError> {
    Ok(if spec.ty == TensorElementType::Float16 {
        FloatType::F16
    } else {
        FloatType::F32
    })
}

/// A float tensor in the element type a graph input wants.
pub fn float_tensor(ty: FloatType, shape: Vec<i64>, data: &[f32]) -> Result<DynValue, ort::Error> {
    Ok(match ty {
        FloatType::F32 => Tensor::from_array((shape, data.to_vec()))?.into_dyn(),
        FloatType::F16 => {
            let v: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
            Tensor::from_array((shape, v))?.into_dyn()
        }
    })
}

pub fn i64_tensor(shape: Vec<i64>, data: Vec<i64>) -> Result<DynValue, ort::Error> {
    Ok(Tensor::from_array((shape, data))?.into_dyn())
}

/// Read any float tensor as f32 with its shape.
pub fn read_f32(value: &DynValue) -> Result<(Vec<i64>, Vec<f32>), ort::Error> {
    if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
        return Ok((shape.to_vec(), data.to_vec()));
    }
    let (shape, data) = value.try_extract_tensor::<f16>()?;
    Ok((shape.to_vec(), data.iter().map(|x| x.to_f32()).collect()))
}
