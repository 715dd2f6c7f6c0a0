#!/usr/bin/env bash
# The one command that runs every check and test (README "Tests"; CI calls it).
# Needs what `tools/setup.sh --deps` installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(pwd)/.local/onnxruntime/lib/libonnxruntime.so}"
cargo fmt --all -- --check
cargo clippy --all-targets --features cuda -- -D warnings
cargo clippy --all-targets --no-default-features -- -D warnings
cargo test --features cuda 2>&1
