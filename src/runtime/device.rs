//! Where tensors live between ONNX Runtime calls, and the little work done on
//! them there.
//!
//! On the CUDA and TensorRT backends the decoder's KV cache, the encoder's
//! hidden states and the cross-attention cache stay in GPU memory for the
//! whole generation: the decoder sessions run through an
//! [`IoBinding`](ort::session::IoBinding) whose cache outputs are bound to
//! the [`Placement::device`] memory and fed back as the next step's inputs,
//! and only the logits (what the search needs) are bound to host memory.
//! Without it, ONNX Runtime copies every output to the host after each step
//! and every input back before the next — for Florence-2 base at batch 8
//! that is the whole cache (tens of MB) twice per generated token.
//!
//! Beam search reorders cache rows between steps; [`RowGather`] does that
//! where the rows are, with ONNX Runtime's own `Gather` operator in a small
//! graph built here ([`gather_model`]), run on the CUDA provider for the
//! GPU backends and on the CPU provider otherwise.
//!
//! On the CPU backend the "device" is host memory, so the same code runs —
//! and is tested — on machines without a GPU; only the memory it is bound to
//! differs. The CUDA placement has not been run on GPU hardware by this
//! project yet (docs/GPU.md lists what has).

use std::collections::HashMap;
use std::path::Path;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{DynTensorValueType, DynValue, Tensor, TensorElementType};

use super::{open_session_from_memory, Backend, OrtRuntime, RuntimeError, SessionOptions};

/// The CUDA device the GPU backends use (ONNX Runtime's CUDA and TensorRT
/// providers default to device 0, and so does florence-edge).
pub const CUDA_DEVICE_ID: i32 = 0;

/// The memory tensors are kept in between calls (`device`) and the memory
/// the host reads results from (`host`).
#[derive(Debug, Clone)]
pub struct Placement {
    backend: Backend,
    device: MemoryInfo<'static>,
    host: MemoryInfo<'static>,
}

impl Placement {
    /// The placement of a resolved backend (not `Auto`).
    pub fn for_backend(backend: Backend) -> Result<Self, RuntimeError> {
        let info = |device, id| {
            MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default)
                .map_err(|e| RuntimeError::Environment(format!("memory info for {backend}: {e}")))
        };
        let host = info(AllocationDevice::CPU, 0)?;
        let device =
            match backend {
                Backend::Cpu => host.clone(),
                Backend::Cuda | Backend::TensorRt => info(AllocationDevice::CUDA, CUDA_DEVICE_ID)?,
                Backend::Auto => return Err(RuntimeError::Environment(
                    "internal error: backend must be resolved before choosing where tensors live"
                        .into(),
                )),
            };
        Ok(Self {
            backend,
            device,
            host,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the cache and the hidden states stay between calls.
    pub fn device(&self) -> &MemoryInfo<'static> {
        &self.device
    }

    /// Where results the host reads (logits) are bound.
    pub fn host(&self) -> &MemoryInfo<'static> {
        &self.host
    }

    /// True when `value` lives in this placement's device memory.
    pub fn holds(&self, value: &DynValue) -> bool {
        match value.view().downcast::<DynTensorValueType>() {
            Ok(t) => {
                let m = t.memory_info();
                m.allocation_device() == self.device.allocation_device()
                    && m.device_id() == self.device.device_id()
            }
            Err(_) => false,
        }
    }
}

/// ONNX `TensorProto.DataType` codes of the element types the cache uses.
fn onnx_data_type(ty: TensorElementType) -> Option<u64> {
    match ty {
        TensorElementType::Float32 => Some(1),
        TensorElementType::Int64 => Some(7),
        TensorElementType::Float16 => Some(10),
        _ => None,
    }
}

/// Protocol-buffer writer for the few ONNX messages [`gather_model`] needs.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn int(&mut self, field: u64, v: u64) -> &mut Self {
        self.varint(field << 3);
        self.varint(v);
        self
    }
    fn bytes(&mut self, field: u64, b: &[u8]) -> &mut Self {
        self.varint((field << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn string(&mut self, field: u64, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    fn message(&mut self, field: u64, m: &Proto) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// `ValueInfoProto` of a tensor of element type `ty` and unknown shape.
fn tensor_value_info(name: &str, ty: u64) -> Proto {
    let mut tensor = Proto::default();
    tensor.int(1, ty); // TypeProto.Tensor.elem_type; no shape: any rank
    let mut type_proto = Proto::default();
    type_proto.message(1, &tensor); // TypeProto.tensor_type
    let mut info = Proto::default();
    info.string(1, name).message(2, &type_proto);
    info
}

/// An ONNX model (opset 13) with one node, `output = Gather(data, indices,
/// axis=0)`: rows of `data` picked by `indices`, for tensors of any rank
/// with element type `ty`. Written out by hand so that no model file has to
/// ship with the binary and no protobuf dependency is needed.
pub fn gather_model(ty: TensorElementType) -> Option<Vec<u8>> {
    let data_type = onnx_data_type(ty)?;
    let mut axis = Proto::default();
    axis.string(1, "axis").int(3, 0).int(20, 2); // name, i, type = INT
    let mut node = Proto::default();
    node.string(1, "data")
        .string(1, "indices")
        .string(2, "output")
        .string(3, "gather_rows")
        .string(4, "Gather")
        .message(5, &axis);
    let mut graph = Proto::default();
    graph
        .message(1, &node)
        .string(2, "florence_edge_gather_rows")
        .message(11, &tensor_value_info("data", data_type))
        .message(11, &tensor_value_info("indices", 7))
        .message(12, &tensor_value_info("output", data_type));
    let mut opset = Proto::default();
    opset.string(1, "").int(2, 13);
    let mut model = Proto::default();
    model
        .int(1, 8) // ir_version
        .string(2, "florence-edge")
        .message(7, &graph)
        .message(8, &opset);
    Some(model.0)
}

/// Reorders (or repeats) the rows of tensors where they live: beam search's
/// cache reordering and the per-beam expansion of the encoder output.
pub struct RowGather {
    rt: &'static OrtRuntime,
    placement: Placement,
    threads: usize,
    /// Host memory is gathered by copying rows directly (a one-node session
    /// run per tensor costs more than the copy: +11 ms per step at beam 3 ×
    /// batch 4 on Florence-2 base); the graph is for device memory. Tests
    /// set it to run the graph on the CPU provider.
    graph_on_host: bool,
    /// Per ONNX element type code.
    sessions: HashMap<u64, (Session, IoBinding)>,
}

impl RowGather {
    pub fn new(rt: &'static OrtRuntime, placement: Placement, threads: usize) -> Self {
        Self {
            rt,
            placement,
            threads,
            graph_on_host: false,
            sessions: HashMap::new(),
        }
    }

    /// Gather host tensors with the graph too (on the CPU provider), as
    /// device tensors are: how the graph is tested without a GPU.
    pub fn with_graph_on_host(mut self, on: bool) -> Self {
        self.graph_on_host = on;
        self
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    fn name() -> &'static Path {
        Path::new("<florence-edge gather_rows graph>")
    }

    fn error(reason: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Session {
            path: Self::name().to_path_buf(),
            reason: reason.to_string(),
        }
    }

    /// `value[rows[0]], value[rows[1]], …` stacked along the first axis, in
    /// the placement's device memory. Rows out of range are an error, not a
    /// wrapped or clamped index.
    pub fn gather(&mut self, value: &DynValue, rows: &[usize]) -> Result<DynValue, RuntimeError> {
        let ty = value
            .dtype()
            .tensor_type()
            .ok_or_else(|| Self::error("gathering rows of a value that is not a tensor"))?;
        let shape = value.shape();
        let first = shape.first().copied().unwrap_or(0);
        if let Some(&bad) = rows.iter().find(|&&r| r as i64 >= first) {
            return Err(Self::error(format!(
                "row {bad} asked of a tensor of shape {:?} ({first} rows)",
                &shape[..]
            )));
        }
        let code = onnx_data_type(ty).ok_or_else(|| {
            Self::error(format!(
                "no row gather for element type {ty:?}; allowed: float32, float16, int64"
            ))
        })?;
        if self.placement.device().is_cpu_accessible() && !self.graph_on_host {
            return host_gather(value, ty, rows).map_err(Self::error);
        }
        if !self.sessions.contains_key(&code) {
            let model = gather_model(ty).ok_or_else(|| Self::error("no gather model"))?;
            let backend = match self.placement.backend() {
                // A one-operator graph is not worth a TensorRT engine; the
                // CUDA provider runs it on the same device memory.
                Backend::TensorRt | Backend::Cuda => Backend::Cuda,
                _ => Backend::Cpu,
            };
            let options = SessionOptions {
                backend,
                intra_threads: self.threads,
                ..SessionOptions::default()
            };
            let session = open_session_from_memory(self.rt, Self::name(), &model, &options)?;
            let binding = session.create_binding().map_err(Self::error)?;
            self.sessions.insert(code, (session, binding));
        }
        let (session, binding) = self
            .sessions
            .get_mut(&code)
            .ok_or_else(|| Self::error("row gather session missing after creation"))?;
        let indices = Tensor::from_array((
            vec![rows.len() as i64],
            rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
        ))
        .map_err(Self::error)?;
        binding.bind_input("data", value).map_err(Self::error)?;
        binding
            .bind_input("indices", &indices)
            .map_err(Self::error)?;
        binding
            .bind_output_to_device("output", self.placement.device())
            .map_err(Self::error)?;
        let mut out = session.run_binding(binding).map_err(Self::error)?;
        let gathered = out
            .remove("output")
            .ok_or_else(|| Self::error("no output"))?;
        drop(out);
        // Do not keep the inputs alive (the binding holds them) until the
        // next call: the cache they belong to is about to be replaced.
        binding.clear_inputs();
        Ok(gathered)
    }
}

/// Rows of a host tensor copied into a new one.
fn host_gather(
    value: &DynValue,
    ty: TensorElementType,
    rows: &[usize],
) -> Result<DynValue, ort::Error> {
    fn gather<T: Copy>(shape: &[i64], data: &[T], rows: &[usize]) -> (Vec<i64>, Vec<T>) {
        let row_len: usize = shape[1..].iter().map(|&d| d.max(0) as usize).product();
        let mut out = Vec::with_capacity(rows.len() * row_len);
        for &r in rows {
            out.extend_from_slice(&data[r * row_len..(r + 1) * row_len]);
        }
        let mut new_shape = shape.to_vec();
        new_shape[0] = rows.len() as i64;
        (new_shape, out)
    }
    Ok(match ty {
        TensorElementType::Float16 => {
            let (shape, data) = value.try_extract_tensor::<half::f16>()?;
            Tensor::from_array(gather(shape, data, rows))?.into_dyn()
        }
        TensorElementType::Int64 => {
            let (shape, data) = value.try_extract_tensor::<i64>()?;
            Tensor::from_array(gather(shape, data, rows))?.into_dyn()
        }
        _ => {
            let (shape, data) = value.try_extract_tensor::<f32>()?;
            Tensor::from_array(gather(shape, data, rows))?.into_dyn()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_the_protobuf_encoding() {
        let mut p = Proto::default();
        p.varint(1);
        p.varint(300);
        p.varint(0);
        assert_eq!(p.0, vec![0x01, 0xac, 0x02, 0x00]);
    }

    #[test]
    fn gather_model_is_only_built_for_cache_element_types() {
        assert!(gather_model(TensorElementType::Float32).is_some());
        assert!(gather_model(TensorElementType::Float16).is_some());
        assert!(gather_model(TensorElementType::Int64).is_some());
        assert!(gather_model(TensorElementType::Uint8).is_none());
        // The element type is written into both the data and the output
        // value infos: float16's code (10) appears where float32's (1) did.
        let f32_model = gather_model(TensorElementType::Float32).unwrap_or_default();
        let f16_model = gather_model(TensorElementType::Float16).unwrap_or_default();
        assert_eq!(f32_model.len(), f16_model.len());
        let differing = f32_model
            .iter()
            .zip(&f16_model)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differing, 2, "data and output elem_type only");
    }
}
