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
// SAFETY: as SequenceInfo: #[repr(C)] 4-byte scalars mirrored in loc_tokens.cu.
unsafe impl DeviceRepr for LocationToken {}
// SAFETY: as SequenceInfo: #[repr(C)] 4-byte scalars mirrored in loc_tokens.cu.
unsafe impl DeviceRepr for LocationSummary {}
// SAFETY: all-zero bytes are a valid value of each field (integers and floats).
unsafe impl ValidAsZeroBits for SequenceInfo {}
// SAFETY: all-zero bytes are a valid value of each field (integers and floats).
unsafe impl ValidAsZeroBits for LocationToken {}
// SAFETY: all-zero bytes are a valid value of each field (integers and floats).
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

#[cfg(test)]
mod tests {
    use crate::postprocess::loc_ids::{
        parse_location_tokens, LocationGrouping, LocationParse, LocationSummary, LocationToken,
        SequenceInfo, TokenBatch, LOCATION_BINS,
    };

    /// `parse_location_tokens` of loc_tokens.cu on the host: each token position is
    /// handled on its own (as by one GPU thread), walking to the ends of its run, and
    /// the counters are bumped where the kernel's atomics are.
    fn emulate_kernel(batch: &TokenBatch<'_>, loc0: i64) -> LocationParse {
        let bins = LOCATION_BINS;
        let location_bin = |id: i64| -> i32 {
            let d = id.wrapping_sub(loc0);
            if id >= loc0 && d < i64::from(bins) {
                d as i32
            } else {
                -1
            }
        };
        let max_len = batch.max_len;
        let mut tokens = vec![LocationToken::NONE; batch.sequences.len() * max_len];
        let mut summaries = Vec::new();
        for (block, seq) in batch.sequences.iter().enumerate() {
            let s = &batch.ids[block * max_len..(block + 1) * max_len];
            let len = (seq.length as usize).min(max_len);
            let mut counts = [0u32; 4];
            for t in 0..max_len {
                let mut o = LocationToken::NONE;
                let bin = if t < len { location_bin(s[t]) } else { -1 };
                if bin >= 0 {
                    let mut start = t;
                    while start > 0 && location_bin(s[start - 1]) >= 0 {
                        start -= 1;
                    }
                    let mut end = t + 1;
                    while end < len && location_bin(s[end]) >= 0 {
                        end += 1;
                    }
                    let pos = (t - start) as u32;
                    let run_len = (end - start) as u32;
                    let axis = pos & 1;
                    let size = if axis == 0 {
                        seq.image_width
                    } else {
                        seq.image_height
                    };
                    let center = bin as f32 + 0.5;
                    o.bin = bin;
                    o.run_start = start as i32;
                    o.run_len = run_len as i32;
                    o.axis = axis;
                    o.coord_px = center * size / bins as f32;
                    o.coord_norm = center / bins as f32;
                    counts[0] += 1;
                    if pos == 0 {
                        counts[1] += 1;
                    }
                    if let Some(group) = pos.checked_div(seq.group_len) {
                        let complete = (group + 1) * seq.group_len <= run_len;
                        o.group = group as i32;
                        o.complete = u32::from(complete);
                        if pos % seq.group_len == 0 {
                            counts[if complete { 2 } else { 3 }] += 1;
                        }
                    }
                }
                tokens[block * max_len + t] = o;
            }
            summaries.push(LocationSummary {
                location_tokens: counts[0],
                runs: counts[1],
                complete_groups: counts[2],
                malformed_groups: counts[3],
            });
        }
        LocationParse {
            max_len,
            tokens,
            summaries,
        }
    }

    #[test]
    fn kernel_logic_on_the_host_matches_the_cpu_twin() {
        const LOC0: i64 = 50_269;
        let mut x = 0x853c_49e6_748f_ea9b_u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let groupings = [
            LocationGrouping::None,
            LocationGrouping::PolygonPoints,
            LocationGrouping::Boxes,
            LocationGrouping::QuadBoxes,
        ];
        for round in 0..20 {
            let (count, max_len) = (1 + round % 7, 5 + next(300) as usize);
            let mut ids = vec![1i64; count * max_len];
            let mut seqs = Vec::new();
            for i in 0..count {
                let length = next(max_len as u64 + 1) as usize;
                for id in &mut ids[i * max_len..i * max_len + length] {
                    *id = match next(10) {
                        0 | 1 => next(50_000) as i64,
                        2 => LOC0 - 1 - next(3) as i64,
                        3 => LOC0 + 1000 + next(3) as i64,
                        _ => LOC0 + next(1000) as i64,
                    };
                }
                seqs.push(SequenceInfo::new(
                    1.0 + next(4000) as f32,
                    1.0 + next(3000) as f32,
                    length as u32,
                    groupings[next(4) as usize],
                ));
            }
            let batch = TokenBatch {
                ids: &ids,
                max_len,
                sequences: &seqs,
            };
            let cpu = parse_location_tokens(&batch, LOC0).expect("valid batch");
            assert_eq!(emulate_kernel(&batch, LOC0), cpu, "round {round}");
        }
    }
}
