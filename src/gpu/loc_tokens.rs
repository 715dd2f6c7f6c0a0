//! Host side of `kernels/loc_tokens.cu`: location-token parsing for a batch of
//! generated sequences. Same input and output types as the CPU twin
//! ([`crate::postprocess::loc_ids`]), so callers can switch freely and tests can
//! compare field by field.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::context::LOC_TOKENS;
use super::{driver, GpuContext, GpuError};
use crate::postprocess::loc_ids::{
    validate, LocationParse, LocationSummary, LocationToken, SequenceInfo, TokenBatch,
    LOCATION_BINS,
};

// SAFETY: plain #[repr(C)] structs of 4-byte scalars; the layouts are mirrored in
// loc_tokens.cu and pinned by size tests in loc_ids.rs.
unsafe impl DeviceRepr for SequenceInfo {}
unsafe impl DeviceRepr for LocationToken {}
unsafe impl DeviceRepr for LocationSummary {}
// SAFETY: all-zero bytes are a valid value of each field (integers and floats).
unsafe impl ValidAsZeroBits for SequenceInfo {}
unsafe impl ValidAsZeroBits for LocationToken {}
unsafe impl ValidAsZeroBits for LocationSummary {}

const THREADS_PER_BLOCK: u32 = 256;

/// Parses location tokens on the GPU. Keeps its device buffers between calls and
/// grows them when a larger batch arrives.
pub struct GpuLocationParser {
    stream: Arc<CudaStream>,
    function: CudaFunction,
    loc0_id: i64,
    buffers: Option<Buffers>,
    /// (sequences, padded length) of the last parsed batch, for [`Self::relaunch`].
    last_shape: Option<(usize, usize)>,
}

struct Buffers {
    ids: CudaSlice<i64>,
    sequences: CudaSlice<SequenceInfo>,
    tokens: CudaSlice<LocationToken>,
    summaries: CudaSlice<LocationSummary>,
}

impl GpuLocationParser {
    /// `loc0_id` is the id of `<loc_0>` in tokenizer.json.
    pub fn new(gpu: &GpuContext, loc0_id: i64) -> Result<Self, GpuError> {
        Ok(GpuLocationParser {
            stream: gpu.stream().clone(),
            function: gpu.function(LOC_TOKENS.name, "parse_location_tokens")?,
            loc0_id,
            buffers: None,
            last_shape: None,
        })
    }

    fn buffers(&mut self, ids: usize, sequences: usize) -> Result<&mut Buffers, GpuError> {
        let fits = self.buffers.as_ref().is_some_and(|b| {
            b.ids.len() >= ids && b.sequences.len() >= sequences && b.tokens.len() >= ids
        });
        if !fits {
            let s = &self.stream;
            let alloc = "allocating location-token buffers";
            self.buffers = Some(Buffers {
                ids: s.alloc_zeros(ids).map_err(driver(alloc))?,
                sequences: s.alloc_zeros(sequences).map_err(driver(alloc))?,
                tokens: s.alloc_zeros(ids).map_err(driver(alloc))?,
                summaries: s.alloc_zeros(sequences).map_err(driver(alloc))?,
            });
        }
        self.buffers.as_mut().ok_or(GpuError::EmptyBatch)
    }

    /// Uploads the batch, runs the kernel and downloads tokens and summaries.
    pub fn parse(&mut self, batch: &TokenBatch<'_>) -> Result<LocationParse, GpuError> {
        validate(batch)?;
        if batch.sequences.is_empty() || batch.max_len == 0 {
            return Err(GpuError::EmptyBatch);
        }
        let count = batch.sequences.len();
        let max_len = batch.max_len;
        let loc0_id = self.loc0_id;
        let function = self.function.clone();
        let stream = self.stream.clone();
        self.last_shape = Some((count, max_len));
        let b = self.buffers(batch.ids.len(), count)?;
        stream
            .memcpy_htod(batch.ids, &mut b.ids.slice_mut(..batch.ids.len()))
            .map_err(driver("uploading token ids"))?;
        stream
            .memcpy_htod(batch.sequences, &mut b.sequences.slice_mut(..count))
            .map_err(driver("uploading sequence descriptors"))?;
        launch(&stream, &function, b, count, max_len, loc0_id)?;
        let mut tokens = stream
            .clone_dtoh(&b.tokens.slice(..count * max_len))
            .map_err(driver("downloading location tokens"))?;
        tokens.truncate(count * max_len);
        let summaries = stream
            .clone_dtoh(&b.summaries.slice(..count))
            .map_err(driver("downloading location summaries"))?;
        Ok(LocationParse {
            max_len,
            tokens,
            summaries,
        })
    }

    /// Launches the kernel again on the batch of the last [`Self::parse`], already on
    /// the device, without copies: the benchmark measures the kernel alone with it.
    pub fn relaunch(&mut self) -> Result<(), GpuError> {
        let (sequences, max_len) = self.last_shape.ok_or(GpuError::EmptyBatch)?;
        let function = self.function.clone();
        let stream = self.stream.clone();
        let loc0_id = self.loc0_id;
        let b = self.buffers(sequences * max_len, sequences)?;
        launch(&stream, &function, b, sequences, max_len, loc0_id)
    }
}

fn launch(
    stream: &Arc<CudaStream>,
    function: &CudaFunction,
    b: &mut Buffers,
    sequences: usize,
    max_len: usize,
    loc0_id: i64,
) -> Result<(), GpuError> {
    // validate() bounds max_len by MAX_SEQUENCE_LEN and the caller's slice length
    // bounds the number of sequences, so both fit the kernel's u32 parameters.
    let max_len_u32 = max_len as u32;
    let bins = LOCATION_BINS;
    let config = LaunchConfig {
        grid_dim: (sequences as u32, 1, 1),
        block_dim: (THREADS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = stream.launch_builder(function);
    builder
        .arg(&b.ids)
        .arg(&max_len_u32)
        .arg(&b.sequences)
        .arg(&loc0_id)
        .arg(&bins)
        .arg(&mut b.tokens)
        .arg(&mut b.summaries);
    // SAFETY: argument order and types match parse_location_tokens in loc_tokens.cu;
    // the buffers hold at least sequences * max_len tokens and `sequences` summaries.
    unsafe { builder.launch(config) }.map_err(driver("launching parse_location_tokens"))?;
    Ok(())
}
