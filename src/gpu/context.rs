//! Finding the driver and NVRTC, opening the device, and compiling the kernels once.
//!
//! The kernels are compiled by NVRTC to a CUBIN for the exact GPU (`sm_XY`), not to
//! PTX: a CUBIN loads on any driver of the same CUDA major version, while PTX from a
//! newer NVRTC is rejected by an older driver's JIT. The CUBIN is cached on disk under
//! a name built from everything that changes it ([`KernelCacheKey`]).

use std::ffi::{c_char, CString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;

use super::{driver, GpuError};

/// One `.cu` file and the functions that must exist in it.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

pub(crate) const PREPROCESS: KernelSource = KernelSource {
    name: "preprocess",
    source: include_str!("kernels/preprocess.cu"),
    functions: &[
        "resize_first_pass_u8",
        "resize_second_pass_f32",
        "resize_second_pass_f16",
        "resize_second_pass_u8",
    ],
};

pub(crate) const LOC_TOKENS: KernelSource = KernelSource {
    name: "loc_tokens",
    source: include_str!("kernels/loc_tokens.cu"),
    functions: &["parse_location_tokens"],
};

/// Every kernel source the daemon uses; all are compiled and loaded at start-up.
pub const KERNEL_SOURCES: [KernelSource; 2] = [PREPROCESS, LOC_TOKENS];

/// NVRTC options. No fast math and no FMA contraction: the preprocessing output must
/// be bit-identical to the CPU twin, which rounds every operation separately.
pub fn compile_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".to_owned(),
        "--prec-div=true".to_owned(),
        "--prec-sqrt=true".to_owned(),
        "--ftz=false".to_owned(),
        "--std=c++17".to_owned(),
    ]
}

/// What describes the device the kernels run on; logged at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    /// CUDA version the driver supports, e.g. (13, 0).
    pub driver_version: (i32, i32),
    pub nvrtc_version: (i32, i32),
    pub total_memory_bytes: usize,
}

/// Identifies a compiled kernel: a CUBIN is only valid for the same source, options,
/// GPU architecture and compiler.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelCacheKey {
    pub kernel: String,
    pub gpu_name: String,
    pub compute_capability: (i32, i32),
    pub nvrtc_version: (i32, i32),
    /// FNV-1a of the source text and the compile options.
    pub source_hash: u64,
}

impl KernelCacheKey {
    pub fn new(
        kernel: &str,
        source: &str,
        options: &[String],
        gpu_name: &str,
        compute_capability: (i32, i32),
        nvrtc_version: (i32, i32),
    ) -> Self {
        let mut hash = Fnv1a64::new();
        hash.write(source.as_bytes());
        for option in options {
            hash.write(&[0]);
            hash.write(option.as_bytes());
        }
        KernelCacheKey {
            kernel: kernel.to_owned(),
            gpu_name: gpu_name.to_owned(),
            compute_capability,
            nvrtc_version,
            source_hash: hash.finish(),
        }
    }

    /// A file name that is safe on any file system: the GPU name is reduced to
    /// lower-case ASCII letters, digits and dashes.
    pub fn file_name(&self) -> String {
        let mut gpu = String::with_capacity(self.gpu_name.len());
        for c in self.gpu_name.chars() {
            if c.is_ascii_alphanumeric() {
                gpu.push(c.to_ascii_lowercase());
            } else if !gpu.ends_with('-') {
                gpu.push('-');
            }
        }
        let gpu = gpu.trim_matches('-');
        format!(
            "{}-{}-sm{}{}-nvrtc{}.{}-{:016x}.cubin",
            self.kernel,
            if gpu.is_empty() { "gpu" } else { gpu },
            self.compute_capability.0,
            self.compute_capability.1,
            self.nvrtc_version.0,
            self.nvrtc_version.1,
            self.source_hash
        )
    }
}

/// 64-bit FNV-1a: tiny, and stable across Rust versions and machines (unlike
/// `DefaultHasher`), which a file name on disk needs.
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    pub fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

/// How a kernel module got loaded, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache file.
    Hit { path: PathBuf },
    /// Compiled now; `store_error` says why it could not be cached (the daemon still runs).
    Compiled {
        path: PathBuf,
        store_error: Option<String>,
    },
}

struct LoadedKernel {
    source: KernelSource,
    functions: Vec<(&'static str, CudaFunction)>,
    outcome: CacheOutcome,
}

/// An open device with its stream and every kernel loaded.
pub struct GpuContext {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    kernels: Vec<LoadedKernel>,
}

/// The library names cudarc tries for `lib` (same order), for error messages.
fn candidates(libs: &[&str]) -> String {
    let mut names: Vec<String> = Vec::new();
    for name in libs.iter().flat_map(|l| cudarc::get_lib_name_candidates(l)) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(", ")
}

/// Checks that libcuda and libnvrtc can be loaded. cudarc panics on the first call
/// into a missing library, so this must run before anything else touches CUDA.
pub fn ensure_libraries() -> Result<(), GpuError> {
    // SAFETY: only tries to dlopen the candidate names; no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(GpuError::NoDriver {
            looked_for: candidates(&["cuda", "nvcuda"]),
        });
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(GpuError::NoNvrtc {
            looked_for: candidates(&["nvrtc"]),
        });
    }
    Ok(())
}

/// NVRTC's (major, minor) version. Requires [`ensure_libraries`] to have succeeded.
fn nvrtc_version() -> Result<(i32, i32), GpuError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters; the library is present.
    let result = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if result != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(GpuError::Compile {
            kernel: "(none)",
            arch: String::new(),
            options: Vec::new(),
            log: format!("nvrtcVersion failed: {result:?}"),
        });
    }
    Ok((major, minor))
}

fn driver_version() -> Result<(i32, i32), GpuError> {
    let mut version = 0;
    // SAFETY: plain out-parameter; the driver library is present and initialised.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(driver("querying the driver version"))?;
    Ok((version / 1000, (version % 1000) / 10))
}

/// Compiles one source to a CUBIN for `arch` (e.g. `sm_90`).
pub fn compile_cubin(
    source: &KernelSource,
    arch: &str,
    options: &[String],
) -> Result<Vec<u8>, GpuError> {
    use cudarc::nvrtc::sys;
    let fail = |log: String| GpuError::Compile {
        kernel: source.name,
        arch: arch.to_owned(),
        options: options.to_vec(),
        log,
    };
    let c_source =
        CString::new(source.source).map_err(|_| fail("source contains a NUL byte".into()))?;
    let c_name = CString::new(format!("{}.cu", source.name))
        .map_err(|_| fail("name contains a NUL byte".into()))?;
    let c_options = options
        .iter()
        .map(|o| CString::new(o.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| fail("an option contains a NUL byte".into()))?;
    let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
    let ok = sys::nvrtcResult::NVRTC_SUCCESS;

    let mut program: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the program.
    let created = unsafe {
        sys::nvrtcCreateProgram(
            &mut program,
            c_source.as_ptr(),
            c_name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if created != ok {
        return Err(fail(format!("nvrtcCreateProgram failed: {created:?}")));
    }
    // SAFETY: `program` is a valid program until destroyed below; buffers are sized
    // from the sizes NVRTC reports.
    let result = unsafe {
        let compiled =
            sys::nvrtcCompileProgram(program, option_ptrs.len() as i32, option_ptrs.as_ptr());
        if compiled != ok {
            let mut log_size = 0usize;
            let mut log = String::from("(no log)");
            if sys::nvrtcGetProgramLogSize(program, &mut log_size) == ok && log_size > 0 {
                let mut buf = vec![0u8; log_size];
                if sys::nvrtcGetProgramLog(program, buf.as_mut_ptr().cast()) == ok {
                    log = String::from_utf8_lossy(&buf)
                        .trim_end_matches('\0')
                        .to_owned();
                }
            }
            Err(fail(format!("{compiled:?}: {log}")))
        } else {
            let mut size = 0usize;
            let got_size = sys::nvrtcGetCUBINSize(program, &mut size);
            if got_size != ok || size == 0 {
                Err(fail(format!("nvrtcGetCUBINSize failed: {got_size:?}")))
            } else {
                let mut cubin = vec![0u8; size];
                let got = sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast());
                if got != ok {
                    Err(fail(format!("nvrtcGetCUBIN failed: {got:?}")))
                } else {
                    Ok(cubin)
                }
            }
        }
    };
    // SAFETY: destroys the program created above exactly once.
    unsafe {
        sys::nvrtcDestroyProgram(&mut program);
    }
    result
}

impl GpuContext {
    /// Opens GPU `ordinal`, compiles (or loads from `cache_dir`) every kernel and
    /// loads every function. Fails with [`GpuError::NoDriver`] on a machine without
    /// the NVIDIA driver.
    pub fn new(ordinal: usize, cache_dir: &Path) -> Result<Self, GpuError> {
        ensure_libraries()?;
        let context =
            CudaContext::new(ordinal).map_err(driver(format!("opening CUDA device {ordinal}")))?;
        let info = DeviceInfo {
            ordinal,
            name: context.name().map_err(driver("reading the device name"))?,
            compute_capability: context
                .compute_capability()
                .map_err(driver("reading the compute capability"))?,
            driver_version: driver_version()?,
            nvrtc_version: nvrtc_version()?,
            total_memory_bytes: context
                .total_mem()
                .map_err(driver("reading the device memory size"))?,
        };
        let stream = context
            .new_stream()
            .map_err(driver("creating a CUDA stream"))?;
        fs::create_dir_all(cache_dir).map_err(|source| GpuError::CacheDir {
            path: cache_dir.to_owned(),
            source,
        })?;
        let kernels = KERNEL_SOURCES
            .iter()
            .map(|source| load_kernel(&context, &info, source, cache_dir))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GpuContext {
            context,
            stream,
            info,
            kernels,
        })
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// The stream all kernels of this context are launched on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn cuda_context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// Where each kernel module came from (cache hit or fresh compile).
    pub fn cache_report(&self) -> Vec<(&'static str, CacheOutcome)> {
        self.kernels
            .iter()
            .map(|k| (k.source.name, k.outcome.clone()))
            .collect()
    }

    /// A loaded function. All functions were loaded in [`GpuContext::new`], so a
    /// miss here is a programming error in this module, reported as such.
    pub(crate) fn function(
        &self,
        kernel: &'static str,
        function: &'static str,
    ) -> Result<CudaFunction, GpuError> {
        self.kernels
            .iter()
            .filter(|k| k.source.name == kernel)
            .flat_map(|k| k.functions.iter())
            .find(|(name, _)| *name == function)
            .map(|(_, f)| f.clone())
            .ok_or(GpuError::MissingFunction {
                kernel,
                function,
                source: cudarc::driver::DriverError(
                    cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_FOUND,
                ),
            })
    }
}

fn load_kernel(
    context: &Arc<CudaContext>,
    info: &DeviceInfo,
    source: &KernelSource,
    cache_dir: &Path,
) -> Result<LoadedKernel, GpuError> {
    let (major, minor) = info.compute_capability;
    let arch = format!("sm_{major}{minor}");
    let options = compile_options(&arch);
    let key = KernelCacheKey::new(
        source.name,
        source.source,
        &options,
        &info.name,
        info.compute_capability,
        info.nvrtc_version,
    );
    let path = cache_dir.join(key.file_name());

    // A cache file that is unreadable or that the driver rejects is recompiled over.
    let cached = fs::read(&path)
        .ok()
        .filter(|bytes| !bytes.is_empty())
        .and_then(|bytes| context.load_module(Ptx::from_binary(bytes)).ok());
    let (module, outcome) = match cached {
        Some(module) => (module, CacheOutcome::Hit { path }),
        None => {
            let cubin = compile_cubin(source, &arch, &options)?;
            let store_error = store_atomically(&path, &cubin).err();
            let module = context
                .load_module(Ptx::from_binary(cubin))
                .map_err(driver(format!(
                    "loading the compiled {}.cu module",
                    source.name
                )))?;
            (module, CacheOutcome::Compiled { path, store_error })
        }
    };
    let functions = source
        .functions
        .iter()
        .map(|&function| {
            module
                .load_function(function)
                .map(|f| (function, f))
                .map_err(|source_err| GpuError::MissingFunction {
                    kernel: source.name,
                    function,
                    source: source_err,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LoadedKernel {
        source: *source,
        functions,
        outcome,
    })
}

/// Writes to a temporary file and renames it, so that a concurrent start never
/// reads half a CUBIN.
fn store_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(source: &str, gpu: &str, cc: (i32, i32), nvrtc: (i32, i32)) -> KernelCacheKey {
        KernelCacheKey::new(
            "preprocess",
            source,
            &compile_options("sm_90"),
            gpu,
            cc,
            nvrtc,
        )
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv1a64::new();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cache_key_changes_with_every_input() {
        let base = key("src", "NVIDIA H200", (9, 0), (13, 0));
        let variants = [
            key("src2", "NVIDIA H200", (9, 0), (13, 0)),
            key("src", "NVIDIA H100", (9, 0), (13, 0)),
            key("src", "NVIDIA H200", (8, 9), (13, 0)),
            key("src", "NVIDIA H200", (9, 0), (12, 8)),
            KernelCacheKey::new(
                "preprocess",
                "src",
                &compile_options("sm_89"),
                "NVIDIA H200",
                (9, 0),
                (13, 0),
            ),
            KernelCacheKey::new(
                "loc_tokens",
                "src",
                &compile_options("sm_90"),
                "NVIDIA H200",
                (9, 0),
                (13, 0),
            ),
        ];
        for v in &variants {
            assert_ne!(v.file_name(), base.file_name(), "{v:?}");
        }
        assert_eq!(
            base.file_name(),
            key("src", "NVIDIA H200", (9, 0), (13, 0)).file_name()
        );
    }

    #[test]
    fn cache_file_name_is_sanitized() {
        let k = key("src", " NVIDIA H200 NVL / 141GB ", (9, 0), (13, 2));
        let name = k.file_name();
        assert!(
            name.starts_with("preprocess-nvidia-h200-nvl-141gb-sm90-nvrtc13.2-"),
            "{name}"
        );
        assert!(name.ends_with(".cubin"));
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        assert!(key("s", "///", (9, 0), (13, 0))
            .file_name()
            .starts_with("preprocess-gpu-sm90"));
    }

    #[test]
    fn every_output_kind_has_a_loaded_function() {
        use crate::gpu::OutputKind;
        for kind in [OutputKind::F32, OutputKind::F16, OutputKind::U8] {
            assert!(PREPROCESS.functions.contains(&kind.function()), "{kind:?}");
        }
    }

    #[test]
    fn every_declared_function_appears_in_its_source() {
        for source in KERNEL_SOURCES {
            for function in source.functions {
                let decl = format!("__global__ void {function}(");
                assert!(
                    source.source.contains(&decl),
                    "{function} not declared in {}.cu",
                    source.name
                );
            }
        }
    }
}
