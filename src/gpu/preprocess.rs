//! Host side of `kernels/preprocess.cu`: a batch of RGB8 / NV12 frames of any size →
//! resized, normalized CHW planes in FP32 or FP16, written straight into the
//! caller's device buffer (the one the engine reads), bit-exact with the CPU twin.
//!
//! The integer tap tables come from the CPU twin ([`ResampleCoeffs::bicubic`]), so
//! both paths use the very same coefficients; the kernels only add up integer
//! products, in the same order of passes as Pillow (horizontal over the source rows
//! the vertical pass needs, then vertical), and clip to u8 after each pass.
//!
//! This file is the device side ([`GpuPreprocessor`]); the kernels' `#[repr(C)]`
//! types, [`GpuFrame`] and the pure [`BatchPlan`] live in `preprocess_plan.rs` and
//! are re-exported here.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::context::PREPROCESS;
use super::{driver, GpuContext, GpuError};
use crate::preprocess::{Preprocessor, ResampleCoeffs, YuvMatrix, MAX_SIDE};

pub use super::preprocess_plan::{
    BatchPlan, GpuFrame, KernelYuvCoeffs, OutputElement, OutputKind, PreprocessItem, TapTable,
    MAX_BATCH,
};

const THREADS_X: u32 = 128;

/// Device buffers reused across batches; they only grow.
#[derive(Default)]
struct Buffers {
    staging: Option<CudaSlice<u8>>,
    tmp: Option<CudaSlice<u8>>,
    items: Option<CudaSlice<PreprocessItem>>,
    bounds: Option<CudaSlice<u32>>,
    coeffs: Option<CudaSlice<i32>>,
}

fn ensure<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &mut Option<CudaSlice<T>>,
    len: usize,
    what: &str,
) -> Result<(), GpuError> {
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = None;
        *slot = Some(
            stream
                .alloc_zeros(len.max(1))
                .map_err(driver(format!("allocating {len} elements for {what}")))?,
        );
    }
    Ok(())
}

/// Shape of the last batch, to launch the kernels again without uploads (benchmarks).
#[derive(Debug, Clone, Copy)]
struct LaunchShape {
    batch: u32,
    max_rows: u32,
    max_cols: u32,
}

/// Batched GPU preprocessing for one output size and normalization.
pub struct GpuPreprocessor {
    stream: Arc<CudaStream>,
    first_pass: CudaFunction,
    second_f32: CudaFunction,
    second_f16: CudaFunction,
    second_u8: CudaFunction,
    out_width: u32,
    out_height: u32,
    /// The CPU twin's float32 value of every (channel, byte), 3 × 256.
    lut_f32: CudaSlice<f32>,
    /// The same values rounded to f16 (nearest even) on the host, as bits.
    lut_f16: CudaSlice<u16>,
    yuv: KernelYuvCoeffs,
    tables: HashMap<(u32, u32), Arc<ResampleCoeffs>>,
    buffers: Buffers,
    last: Option<LaunchShape>,
}

/// Camera sizes are few; the table cache is cleared if it ever grows past this.
const MAX_CACHED_TABLES: usize = 64;

impl GpuPreprocessor {
    /// Takes the output size and the value table from the CPU twin `cpu`, so that
    /// both paths apply the same preprocessor_config.json; NV12 frames are converted
    /// with `matrix`.
    pub fn new(gpu: &GpuContext, cpu: &Preprocessor, matrix: YuvMatrix) -> Result<Self, GpuError> {
        let (out_height, out_width) = cpu.config().size;
        if !(1..=MAX_SIDE).contains(&out_width) || !(1..=MAX_SIDE).contains(&out_height) {
            return Err(GpuError::OutputShape {
                width: out_width,
                height: out_height,
                max: MAX_SIDE,
            });
        }
        let table: Vec<f32> = cpu.lut_f32().iter().flatten().copied().collect();
        let table_f16: Vec<u16> = table
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        let stream = gpu.stream().clone();
        let lut_f32 = stream
            .clone_htod(&table)
            .map_err(driver("uploading the normalization table"))?;
        let lut_f16 = stream
            .clone_htod(&table_f16)
            .map_err(driver("uploading the FP16 normalization table"))?;
        let f = |name| gpu.function(PREPROCESS.name, name);
        Ok(GpuPreprocessor {
            stream,
            first_pass: f("resize_first_pass_u8")?,
            second_f32: f(OutputKind::F32.function())?,
            second_f16: f(OutputKind::F16.function())?,
            second_u8: f(OutputKind::U8.function())?,
            out_width,
            out_height,
            lut_f32,
            lut_f16,
            yuv: matrix.coeffs().into(),
            tables: HashMap::new(),
            buffers: Buffers::default(),
            last: None,
        })
    }

    /// Waits until the work queued on the context's stream is done: a
    /// consumer on another stream (ONNX Runtime's) may then read the output.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(driver("waiting for the preprocessing kernels"))
    }

    pub fn output_size(&self) -> (u32, u32) {
        (self.out_width, self.out_height)
    }

    /// Elements of output for a batch of `batch` frames (batch × 3 × H × W).
    pub fn output_len(&self, batch: usize) -> usize {
        batch * 3 * self.out_width as usize * self.out_height as usize
    }

    /// Preprocesses `frames` into `out` (batch × 3 × H × W, or batch × H × W × 3 for
    /// u8). Work is queued on the context's stream; the call returns once the frames
    /// are uploaded, and `out` is ready for any later work on that stream.
    pub fn preprocess_into<T: OutputElement>(
        &mut self,
        frames: &[GpuFrame<'_>],
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<(), GpuError> {
        let expected = self.output_len(frames.len());
        if out.len() != expected {
            return Err(GpuError::OutputSize {
                expected,
                actual: out.len(),
            });
        }
        self.upload(frames)?;
        let stream = self.stream.clone();
        let (ptr, _record) = out.device_ptr_mut(&stream);
        self.launch::<T>(ptr)
    }

    /// As [`Self::preprocess_into`], for a buffer owned by someone else (an engine's
    /// input binding).
    ///
    /// # Safety
    /// `out` must be a device address in this context, valid for writes of
    /// `out_len` elements of `T` until the stream's work is done, and not used by
    /// other streams meanwhile.
    pub unsafe fn preprocess_into_raw<T: OutputElement>(
        &mut self,
        frames: &[GpuFrame<'_>],
        out: u64,
        out_len: usize,
    ) -> Result<(), GpuError> {
        let expected = self.output_len(frames.len());
        if out_len != expected {
            return Err(GpuError::OutputSize {
                expected,
                actual: out_len,
            });
        }
        self.upload(frames)?;
        self.launch::<T>(out)
    }

    /// Runs the kernels again on the frames of the last call, already on the device
    /// (no upload): the benchmark times the kernels alone with it.
    pub fn relaunch_into<T: OutputElement>(
        &mut self,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<(), GpuError> {
        let last = self.last.ok_or(GpuError::EmptyBatch)?;
        let expected = self.output_len(last.batch as usize);
        if out.len() != expected {
            return Err(GpuError::OutputSize {
                expected,
                actual: out.len(),
            });
        }
        let stream = self.stream.clone();
        let (ptr, _record) = out.device_ptr_mut(&stream);
        self.launch::<T>(ptr)
    }

    /// Plans the batch on the host, then uploads frames, descriptors and tables.
    fn upload(&mut self, frames: &[GpuFrame<'_>]) -> Result<(), GpuError> {
        let (out_width, out_height) = (self.out_width, self.out_height);
        let tables = &mut self.tables;
        let plan = BatchPlan::build(frames, out_width, out_height, |in_size, out_size| {
            if tables.len() >= MAX_CACHED_TABLES {
                tables.clear();
            }
            tables
                .entry((in_size, out_size))
                .or_insert_with(|| Arc::new(ResampleCoeffs::bicubic(in_size, out_size)))
                .clone()
        })?;

        let s = self.stream.clone();
        let b = &mut self.buffers;
        ensure(&s, &mut b.staging, plan.staging_len, "frame staging")?;
        ensure(&s, &mut b.tmp, plan.tmp_len, "horizontally resized rows")?;
        ensure(&s, &mut b.items, plan.items.len(), "frame descriptors")?;
        ensure(&s, &mut b.bounds, plan.bounds.len(), "resize bounds")?;
        ensure(&s, &mut b.coeffs, plan.coeffs.len(), "resize coefficients")?;
        let (Some(staging), Some(items_dev), Some(bounds_dev), Some(coeffs_dev)) = (
            b.staging.as_mut(),
            b.items.as_mut(),
            b.bounds.as_mut(),
            b.coeffs.as_mut(),
        ) else {
            return Err(GpuError::EmptyBatch);
        };
        for (frame, offsets) in frames.iter().zip(&plan.plane_offsets) {
            for (plane, &offset) in frame.planes(0)?.iter().zip(offsets) {
                if let Some((bytes, _)) = plane {
                    s.memcpy_htod(*bytes, &mut staging.slice_mut(offset..offset + bytes.len()))
                        .map_err(driver("uploading frame pixels"))?;
                }
            }
        }
        let base = {
            let (ptr, _record) = staging.device_ptr(&s);
            ptr
        };
        let items: Vec<PreprocessItem> = plan
            .items
            .iter()
            .map(|item| PreprocessItem {
                src: base + item.src,
                src_uv: if item.format == 1 {
                    base + item.src_uv
                } else {
                    0
                },
                ..*item
            })
            .collect();
        s.memcpy_htod(&items, &mut items_dev.slice_mut(..items.len()))
            .map_err(driver("uploading frame descriptors"))?;
        s.memcpy_htod(&plan.bounds, &mut bounds_dev.slice_mut(..plan.bounds.len()))
            .map_err(driver("uploading resize bounds"))?;
        s.memcpy_htod(&plan.coeffs, &mut coeffs_dev.slice_mut(..plan.coeffs.len()))
            .map_err(driver("uploading resize coefficients"))?;
        self.last = Some(LaunchShape {
            batch: items.len() as u32,
            max_rows: plan.max_rows,
            max_cols: plan.max_cols,
        });
        Ok(())
    }

    fn launch<T: OutputElement>(&mut self, out: u64) -> Result<(), GpuError> {
        let shape = self.last.ok_or(GpuError::EmptyBatch)?;
        let s = self.stream.clone();
        let yuv = self.yuv;
        let b = &mut self.buffers;
        let (Some(items), Some(bounds), Some(coeffs), Some(tmp)) = (
            b.items.as_ref(),
            b.bounds.as_ref(),
            b.coeffs.as_ref(),
            b.tmp.as_mut(),
        ) else {
            return Err(GpuError::EmptyBatch);
        };
        let first = LaunchConfig {
            grid_dim: (
                shape.max_cols.div_ceil(THREADS_X),
                shape.max_rows,
                shape.batch,
            ),
            block_dim: (THREADS_X, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut f = s.launch_builder(&self.first_pass);
        f.arg(items)
            .arg(bounds)
            .arg(coeffs)
            .arg(&yuv)
            .arg(&mut *tmp);
        // SAFETY: arguments match resize_first_pass_u8; every item's taps were built
        // for its frame size, its planes were checked and uploaded, and the tmp buffer
        // holds every item's intermediate image (BatchPlan::tmp_len).
        unsafe { f.launch(first) }.map_err(driver("launching resize_first_pass_u8"))?;

        let vertical = LaunchConfig {
            grid_dim: (
                self.out_width.div_ceil(THREADS_X),
                self.out_height,
                shape.batch,
            ),
            block_dim: (THREADS_X, 1, 1),
            shared_mem_bytes: 0,
        };
        let function = match T::KIND {
            OutputKind::F32 => &self.second_f32,
            OutputKind::F16 => &self.second_f16,
            OutputKind::U8 => &self.second_u8,
        };
        let mut v = s.launch_builder(function);
        v.arg(items).arg(bounds).arg(coeffs).arg(&*tmp);
        match T::KIND {
            OutputKind::F32 => {
                v.arg(&self.lut_f32);
            }
            OutputKind::F16 => {
                v.arg(&self.lut_f16);
            }
            OutputKind::U8 => {}
        }
        v.arg(&out);
        // SAFETY: arguments match the chosen kernel; `out` holds output_len(batch)
        // elements of T (checked by the callers).
        unsafe { v.launch(vertical) }
            .map_err(driver(format!("launching {}", T::KIND.function())))?;
        Ok(())
    }
}
