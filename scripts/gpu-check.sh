#!/usr/bin/env bash
# Checks the CUDA kernels on an NVIDIA machine: every kernel against its CPU twin
# (the #[ignore = "needs an NVIDIA GPU"] tests of tests/gpu_kernels.rs) and the
# kernel benchmark (benches/gpu_kernels.rs). See docs/GPU.md.
#
#   scripts/gpu-check.sh                    build without GStreamer, then run
#   scripts/gpu-check.sh --build-only DIR   build and copy the two binaries to DIR
#                                           (to carry to a GPU machine without Rust)
#   scripts/gpu-check.sh --prebuilt DIR     run the binaries in DIR (no cargo needed)
#
# Environment:
#   LOG_DIR                     where logs go (default: target/gpu-check)
#   FLORENCE_EDGE_KERNEL_CACHE  kernel cache directory (default: $LOG_DIR/kernel-cache)
#   NVRTC_FALLBACK              a libnvrtc.so.* (or .xz of it) to use when the machine has none
#   GPU_CHECK_MANIFEST          Cargo.toml to build (default: the repository's)
#   SKIP_BENCH=1                run the tests only
set -euo pipefail

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

mode=run
dir=""
case "${1:-}" in
    "") ;;
    --build-only) mode=build; dir="${2:-}"; [[ -n "$dir" ]] || usage ;;
    --prebuilt) mode=prebuilt; dir="${2:-}"; [[ -n "$dir" ]] || usage ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
manifest="${GPU_CHECK_MANIFEST:-$root/Cargo.toml}"

# Prints the path of the executable cargo built for target kind $1 ("test" or
# "bench") named gpu_kernels.
build_one() {
    local kind="$1"
    local cmd=(cargo test)
    [[ "$kind" == bench ]] && cmd=(cargo bench)
    "${cmd[@]}" --manifest-path "$manifest" --no-default-features --features cuda \
        --"$kind" gpu_kernels --no-run --message-format=json \
        | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep . | tail -n1
}

build() {
    echo "== building the GPU test and bench binaries (no GStreamer, no CUDA toolkit needed)"
    test_bin="$(build_one test)"
    bench_bin="$(build_one bench)"
    [[ -x "$test_bin" && -x "$bench_bin" ]] || { echo "build produced no executables" >&2; exit 1; }
}

if [[ "$mode" == build ]]; then
    build
    mkdir -p "$dir"
    cp "$test_bin" "$dir/gpu_kernels-test"
    cp "$bench_bin" "$dir/gpu_kernels-bench"
    cp "$0" "$dir/gpu-check.sh"
    # Debug info is most of the test binary's size; the carry to a GPU machine is limited.
    command -v strip >/dev/null && strip "$dir/gpu_kernels-test" "$dir/gpu_kernels-bench"
    echo "binaries in $dir; on the GPU machine: $dir/gpu-check.sh --prebuilt $dir"
    exit 0
fi

if [[ "$mode" == prebuilt ]]; then
    test_bin="$dir/gpu_kernels-test"
    bench_bin="$dir/gpu_kernels-bench"
    for b in "$test_bin" "$bench_bin"; do
        [[ -x "$b" ]] || { echo "missing $b (build it with --build-only)" >&2; exit 1; }
    done
else
    build
fi

log_dir="${LOG_DIR:-$root/target/gpu-check}"
mkdir -p "$log_dir"
export FLORENCE_EDGE_KERNEL_CACHE="${FLORENCE_EDGE_KERNEL_CACHE:-$log_dir/kernel-cache}"

# --- what the machine offers -------------------------------------------------
{
    echo "== machine"
    date -u
    uname -a
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || nvidia-smi || true
        nvidia-smi | head -n 4 || true
    else
        echo "nvidia-smi: not found"
    fi
    echo "== CUDA libraries known to the loader"
    ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvrtc' || echo "(none in ldconfig)"
} 2>&1 | tee "$log_dir/machine.log"

# cudarc dlopens libnvrtc.so, .so.13, .so.12 ... by name: make sure one is reachable.
nvrtc_reachable() {
    ldconfig -p 2>/dev/null | grep -qE 'libnvrtc\.so(\.1[23])?( |$)' && return 0
    local d path="${LD_LIBRARY_PATH:-}"
    for d in ${path//:/ }; do
        compgen -G "$d/libnvrtc.so*" >/dev/null && return 0
    done
    return 1
}
if ! nvrtc_reachable; then
    found="$(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /usr/lib/x86_64-linux-gnu \
        /usr/lib/aarch64-linux-gnu /usr/local/lib/python3*/dist-packages/nvidia \
        /usr/lib/python3*/site-packages/nvidia -name 'libnvrtc.so*' 2>/dev/null | head -n1 || true)"
    if [[ -n "$found" ]]; then
        echo "== using NVRTC from $found" | tee -a "$log_dir/machine.log"
        export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    elif [[ -n "${NVRTC_FALLBACK:-}" && -f "$NVRTC_FALLBACK" ]]; then
        libdir="$log_dir/nvrtc"
        mkdir -p "$libdir"
        for f in "$NVRTC_FALLBACK" "$(dirname "$NVRTC_FALLBACK")"/libnvrtc-builtins*; do
            [[ -f "$f" ]] || continue
            case "$f" in
                *.xz) xz -dc "$f" > "$libdir/$(basename "${f%.xz}")" ;;
                *) cp "$f" "$libdir/" ;;
            esac
        done
        echo "== no NVRTC on this machine; using the carried one: $(ls "$libdir")" | tee -a "$log_dir/machine.log"
        export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        echo "== no NVRTC found; the tests will report it" | tee -a "$log_dir/machine.log"
    fi
fi

# --- tests and benchmark ------------------------------------------------------
status=0
echo "== tests: every kernel against its CPU twin" | tee "$log_dir/tests.log"
if ! "$test_bin" --include-ignored --test-threads=1 --nocapture 2>&1 | tee -a "$log_dir/tests.log"; then
    status=1
fi
if [[ "${SKIP_BENCH:-0}" != 1 ]]; then
    echo "== benchmark" | tee "$log_dir/bench.log"
    if ! "$bench_bin" --bench 2>&1 | tee -a "$log_dir/bench.log"; then
        status=1
    fi
fi
echo "== gpu-check: $([[ $status == 0 ]] && echo PASSED || echo FAILED); logs in $log_dir"
exit "$status"
