//! Host probes: what the engines depend on besides the graphs. GPU name
//! and compute capability come from nvidia-smi or, on a Jetson, the device
//! tree; the TensorRT version from `getInferLibVersion` of the libnvinfer
//! the loader finds; the ONNX Runtime version from the loaded library. A
//! component that cannot be probed is [`Probed::Unknown`] with the reason,
//! never a guess.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::runtime::OrtRuntime;

/// How long `nvidia-smi` may take before the probe gives up on it (a wedged
/// driver makes it hang).
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(10);

/// A fingerprint component: known, or unknown with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probed {
    Known(String),
    Unknown(String),
}

impl Probed {
    pub fn known(&self) -> Option<&str> {
        match self {
            Probed::Known(v) => Some(v),
            Probed::Unknown(_) => None,
        }
    }
}

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probed::Known(v) => f.write_str(v),
            Probed::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// What the engines depend on besides the graphs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub gpu_name: Probed,
    pub compute_capability: Probed,
    /// Recorded, not compared: engines depend on TensorRT and the GPU, not
    /// on the driver (TensorRT itself rejects a driver too old for it).
    pub driver_version: Probed,
    pub tensorrt_version: Probed,
    pub onnxruntime_version: Probed,
}

impl HostFacts {
    /// Probes this machine: GPU 0 (the device ONNX Runtime uses by default)
    /// through nvidia-smi or, on a Jetson, the device tree; TensorRT through
    /// `getInferLibVersion` of the libnvinfer the loader finds; ONNX Runtime
    /// through the loaded library's `GetVersionString`.
    pub fn probe(rt: &OrtRuntime) -> Self {
        let gpu = probe_gpu();
        Self {
            gpu_name: gpu.0,
            compute_capability: gpu.1,
            driver_version: gpu.2,
            tensorrt_version: tensorrt_version(),
            onnxruntime_version: probe_onnxruntime(&rt.library),
        }
    }
}

/// One line of `nvidia-smi --query-gpu=name,compute_cap,driver_version
/// --format=csv,noheader`: `NVIDIA GeForce RTX 4090, 8.9, 550.54.15`.
/// Fields nvidia-smi cannot fill read `[N/A]` (Jetson).
pub fn parse_nvidia_smi_line(line: &str) -> (Probed, Probed, Probed) {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let field = |i: usize, what: &str| match fields.get(i) {
        Some(v) if !v.is_empty() && !v.starts_with('[') => Probed::Known((*v).to_string()),
        Some(v) => Probed::Unknown(format!("nvidia-smi reports {what} as {v:?}")),
        None => Probed::Unknown(format!("nvidia-smi printed no {what} in {line:?}")),
    };
    (
        field(0, "the GPU name"),
        field(1, "the compute capability"),
        field(2, "the driver version"),
    )
}

/// Compute capability of the Tegra SoC named in /proc/device-tree/compatible
/// (NUL-separated strings such as `nvidia,p3737-0000+p3701-0000\0nvidia,tegra234`).
pub fn tegra_compute_capability(compatible: &str) -> Probed {
    let known = [
        ("nvidia,tegra234", "8.7"), // Orin
        ("nvidia,tegra194", "7.2"), // Xavier
        ("nvidia,tegra186", "6.2"), // TX2
        ("nvidia,tegra210", "5.3"), // Nano, TX1
    ];
    let names: Vec<&str> = compatible
        .split('\0')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for (soc, cc) in known {
        if names.contains(&soc) {
            return Probed::Known(cc.to_string());
        }
    }
    Probed::Unknown(format!(
        "no known Tegra SoC in /proc/device-tree/compatible ({})",
        names.join(", ")
    ))
}

/// The GPU name of a Jetson for the engine fingerprint: nvidia-smi's name
/// (when it has one) with the device tree's board model, which is what
/// tells the Orin modules apart.
pub fn tegra_gpu_name(smi_name: &Probed, device_tree_model: &str) -> Probed {
    let model = device_tree_model.trim_end_matches('\0').trim();
    match (smi_name.known(), model.is_empty()) {
        (_, true) => smi_name.clone(),
        (Some(name), false) => Probed::Known(format!("{name} / {model}")),
        (None, false) => Probed::Known(model.to_string()),
    }
}

/// `/etc/nv_tegra_release`: `# R36 (release), REVISION: 4.0, GCID: …` →
/// `L4T R36.4.0`.
pub fn parse_nv_tegra_release(text: &str) -> Probed {
    let line = text.lines().next().unwrap_or("");
    let release = line
        .split_whitespace()
        .find(|w| w.starts_with('R') && w[1..].chars().all(|c| c.is_ascii_digit()) && w.len() > 1);
    let revision = line
        .split("REVISION:")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .map(str::trim)
        .filter(|r| !r.is_empty());
    match (release, revision) {
        (Some(r), Some(v)) => Probed::Known(format!("L4T {r}.{v}")),
        _ => Probed::Unknown(format!(
            "/etc/nv_tegra_release starts {line:?}; expected `# R36 (release), REVISION: 4.0, …`"
        )),
    }
}

/// Runs a command, giving up after `timeout`; stdout on success.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut so) = child.stdout.take() {
                    so.read_to_string(&mut out)
                        .map_err(|e| format!("cannot read its output: {e}"))?;
                }
                return if status.success() {
                    Ok(out)
                } else {
                    Err(format!("it exited with {status}"))
                };
            }
            Ok(None) if start.elapsed() > timeout => {
                // The child is ours; a failure to kill it leaves nothing to do.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
}

fn probe_gpu() -> (Probed, Probed, Probed) {
    let mut cmd = Command::new("nvidia-smi");
    cmd.args([
        "--query-gpu=name,compute_cap,driver_version",
        "--format=csv,noheader",
        "--id=0",
    ]);
    let smi = run_with_timeout(cmd, NVIDIA_SMI_TIMEOUT);
    let (mut name, mut cc, mut driver) = match &smi {
        Ok(out) => match out.lines().find(|l| !l.trim().is_empty()) {
            Some(line) => parse_nvidia_smi_line(line),
            None => {
                let why = Probed::Unknown("nvidia-smi printed nothing".into());
                (why.clone(), why.clone(), why)
            }
        },
        Err(e) => {
            let why = Probed::Unknown(format!("nvidia-smi: {e}"));
            (why.clone(), why.clone(), why)
        }
    };
    // Jetson: nvidia-smi is missing or reports [N/A]; the device tree knows.
    if let Ok(compatible) = fs::read("/proc/device-tree/compatible") {
        let compatible = String::from_utf8_lossy(&compatible);
        if compatible.contains("nvidia,tegra") {
            // Every Orin module reports "Orin (nvgpu)" and 8.7: only the
            // board model tells an Orin Nano's engines from an AGX Orin's.
            if let Ok(model) = fs::read("/proc/device-tree/model") {
                name = tegra_gpu_name(&name, &String::from_utf8_lossy(&model));
            }
            if cc.known().is_none() {
                cc = tegra_compute_capability(&compatible);
            }
            if driver.known().is_none() {
                driver = match fs::read_to_string("/etc/nv_tegra_release") {
                    Ok(t) => parse_nv_tegra_release(&t),
                    Err(e) => Probed::Unknown(format!("/etc/nv_tegra_release: {e}")),
                };
            }
        }
    }
    (name, cc, driver)
}

/// `getInferLibVersion()`: TensorRT 10 encodes major·10000 + minor·100 +
/// patch, TensorRT 8 major·1000 + minor·100 + patch.
pub fn decode_tensorrt_version(v: i32) -> String {
    if v >= 100_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

/// The sonames ONNX Runtime's TensorRT provider links against, newest first.
const LIBNVINFER: [&str; 4] = [
    "libnvinfer.so.10",
    "libnvinfer.so.11",
    "libnvinfer.so.8",
    "libnvinfer.so",
];

/// An error with its sources: libloading's own message is only "dlopen
/// failed"; the loader's reason is in the source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// TensorRT's version, from `getInferLibVersion` of the libnvinfer the
/// loader finds; unknown (with why) where none loads.
pub fn tensorrt_version() -> Probed {
    let mut tried = Vec::new();
    for name in LIBNVINFER {
        // SAFETY: loading libnvinfer runs its initialisers, which the
        // TensorRT provider runs anyway when it loads the same library.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => {
                // SAFETY: `int32_t getInferLibVersion()` takes nothing and
                // returns an int, in every TensorRT since 5.
                let version = unsafe {
                    lib.get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion")
                        .map(|f| f())
                };
                return match version {
                    Ok(v) => Probed::Known(decode_tensorrt_version(v)),
                    Err(e) => Probed::Unknown(format!(
                        "{name} has no getInferLibVersion: {}",
                        error_chain(&e)
                    )),
                };
            }
            Err(e) => tried.push(error_chain(&e)),
        }
    }
    Probed::Unknown(format!(
        "TensorRT's library is not on the loader path ({})",
        tried.join("; ")
    ))
}

fn probe_onnxruntime(library: &Path) -> Probed {
    // SAFETY: the library is already loaded by `ort`; this takes another
    // reference to the same handle, so no initialiser runs again.
    let lib = match unsafe { libloading::Library::new(library) } {
        Ok(l) => l,
        Err(e) => {
            return Probed::Unknown(format!(
                "cannot open {}: {}",
                library.display(),
                error_chain(&e)
            ))
        }
    };
    // SAFETY: `OrtGetApiBase` is the library's documented entry point and
    // returns a pointer to a static struct; `GetVersionString` returns a
    // static NUL-terminated string.
    unsafe {
        let getter = match lib
            .get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase")
        {
            Ok(g) => g,
            Err(e) => return Probed::Unknown(format!("{}: {e}", library.display())),
        };
        let base = getter();
        if base.is_null() {
            return Probed::Unknown(format!(
                "{}: OrtGetApiBase returned null",
                library.display()
            ));
        }
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            return Probed::Unknown(format!(
                "{}: GetVersionString returned null",
                library.display()
            ));
        }
        match std::ffi::CStr::from_ptr(s).to_str() {
            Ok(v) => Probed::Known(v.to_string()),
            Err(e) => Probed::Unknown(format!("{}: version is not UTF-8: {e}", library.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_parse_and_not_available_fields_are_unknown() {
        let (n, c, d) = parse_nvidia_smi_line("NVIDIA GeForce RTX 4090, 8.9, 550.54.15");
        assert_eq!(n, Probed::Known("NVIDIA GeForce RTX 4090".into()));
        assert_eq!(c, Probed::Known("8.9".into()));
        assert_eq!(d, Probed::Known("550.54.15".into()));
        let (n, c, _) = parse_nvidia_smi_line("Orin (nvgpu), [N/A], 540.4.0");
        assert_eq!(n, Probed::Known("Orin (nvgpu)".into()));
        assert!(
            matches!(c, Probed::Unknown(ref why) if why.contains("[N/A]")),
            "{c:?}"
        );
    }

    #[test]
    fn orin_modules_are_told_apart_by_their_board_model() {
        let smi = Probed::Known("Orin (nvgpu)".into());
        let nano = tegra_gpu_name(&smi, "NVIDIA Jetson Orin Nano Developer Kit\0");
        let agx = tegra_gpu_name(&smi, "NVIDIA Jetson AGX Orin Developer Kit\0");
        assert_ne!(
            nano, agx,
            "same GPU name and compute capability, other engines"
        );
        assert_eq!(
            nano,
            Probed::Known("Orin (nvgpu) / NVIDIA Jetson Orin Nano Developer Kit".into())
        );
        let missing = Probed::Unknown("nvidia-smi: not found".into());
        assert_eq!(
            tegra_gpu_name(&missing, "NVIDIA Jetson AGX Orin\0"),
            Probed::Known("NVIDIA Jetson AGX Orin".into())
        );
        assert_eq!(tegra_gpu_name(&smi, "\0"), smi);
    }

    #[test]
    fn jetson_facts_come_from_the_device_tree_and_l4t_release() {
        assert_eq!(
            tegra_compute_capability("nvidia,p3737-0000+p3701-0000\0nvidia,tegra234\0"),
            Probed::Known("8.7".into())
        );
        assert!(tegra_compute_capability("nvidia,tegra264\0")
            .known()
            .is_none());
        assert_eq!(
            parse_nv_tegra_release(
                "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13\n"
            ),
            Probed::Known("L4T R36.4.0".into())
        );
        assert!(parse_nv_tegra_release("garbage").known().is_none());
    }

    #[test]
    fn tensorrt_version_numbers_decode_for_both_encodings() {
        assert_eq!(decode_tensorrt_version(100_300), "10.3.0");
        assert_eq!(decode_tensorrt_version(100_701), "10.7.1");
        assert_eq!(decode_tensorrt_version(8601), "8.6.1");
        assert_eq!(decode_tensorrt_version(8502), "8.5.2");
    }
}
