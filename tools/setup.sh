#!/usr/bin/env bash
# One command for a fresh Debian/Ubuntu machine: system packages, the ONNX
# Runtime shared library, the release build — then the main job on the
# embedded defaults (the project's tiny Florence-2 on its test images).
#
#   tools/setup.sh            everything, then run the demo
#   tools/setup.sh --deps     system packages + ONNX Runtime only (CI uses this)
#   tools/setup.sh --no-run   everything but the demo
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ORT_VERSION=1.31.1
ORT_DIR="$ROOT/.local/onnxruntime"
mode=${1:-all}

APT_PACKAGES=(
  build-essential pkg-config ca-certificates curl unzip python3 python3-pip
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-rtsp
  mosquitto mosquitto-clients
  systemd procps
)

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: system packages already installed"
    return
  fi
  echo "setup: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The CPU build of ONNX Runtime ships inside the PyPI `onnxruntime` wheel;
# unpack its shared library into .local/onnxruntime/lib (the daemon looks
# there, see src/runtime).
install_onnxruntime() {
  if ls "$ORT_DIR/lib/libonnxruntime.so.$ORT_VERSION" >/dev/null 2>&1; then
    echo "setup: ONNX Runtime $ORT_VERSION already in $ORT_DIR/lib"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  echo "setup: downloading the onnxruntime==$ORT_VERSION wheel from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$tmp" "onnxruntime==$ORT_VERSION"
  python3 - "$tmp" "$ORT_DIR/lib" <<'PY'
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
wheel = glob.glob(os.path.join(src, "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with open(os.path.join(dst, base), "wb") as f:
                f.write(z.read(name))
            print("setup: unpacked", base)
PY
  rm -rf "$tmp"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/lib/libonnxruntime.so"
}

ensure_rust() {
  if command -v cargo >/dev/null 2>&1; then return; fi
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; return; fi
  echo "setup: installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
}

install_packages
install_onnxruntime
[ "$mode" = "--deps" ] && exit 0
ensure_rust
cargo build --release
[ "$mode" = "--no-run" ] && exit 0
exec tools/demo.sh
