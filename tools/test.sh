#!/usr/bin/env bash
# The one command that runs every check and test (README "Tests"; CI calls it).
# Needs what `tools/setup.sh --deps` installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(pwd)/.local/onnxruntime/lib/libonnxruntime.so}"
cargo fmt --all -- --check
cargo clippy --all-targets --features cuda -- -D warnings
cargo clippy --all-targets --no-default-features -- -D warnings
# Unit, integration and example targets; benches are measured with
# `cargo bench`, never run as tests. GPU tests are #[ignore]d here.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The publisher's kill/restart tests run this example as a separate process.
cargo build --features cuda --example publish_harness
cargo test --no-fail-fast --features cuda --lib --bins --tests --examples 2>&1 | tee "$log" || status=$?
# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "all tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit $status
