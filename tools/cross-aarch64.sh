#!/usr/bin/env bash
# Cross-builds florence-edge for the Jetson (aarch64-unknown-linux-gnu: JetPack 6,
# Ubuntu 22.04, glibc 2.35, GStreamer 1.20) on an x86_64 Debian/Ubuntu machine,
# then runs a chosen set of its tests under qemu user-mode emulation.
# docs/JETSON.md says what runs here, what does not, and why.
#
#   tools/cross-aarch64.sh               sysroot + release daemon + tests under qemu
#   tools/cross-aarch64.sh --build-only  sysroot + release daemon, no tests
#   tools/cross-aarch64.sh --sysroot     prepare the sysroot and aarch64 ONNX Runtime only
#
# Environment:
#   CARGO_TARGET_DIR        cargo's usual target dir (default: target/)
#   FE_AARCH64_DIR          sysroot, ONNX Runtime and GStreamer registry cache
#                           (default: .local/aarch64, git-ignored; kept between runs)
#   FE_AARCH64_TESTS        cargo test target selection (default: see TESTS below)
#   FE_AARCH64_SKIP         space-separated test-name filters passed as --skip
#   QEMU_CPU                emulated CPU (default: neoverse-n1, an Armv8.2 core like
#                           Orin's Cortex-A78AE: no SVE/SME code paths that a Jetson
#                           would never take)
#
# The sysroot is a folder of extracted arm64 .debs, never installed with dpkg:
# installing the arm64 GStreamer -dev packages next to the amd64 ones breaks the
# native build (libgstreamer-plugins-base1.0-dev is not Multi-Arch: same). apt
# resolves the packages with a private state (empty dpkg status, arm64 only), so
# the machine's own apt configuration is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
mode=${1:-all}
case "$mode" in
  all | --build-only | --sysroot) ;;
  *)
    echo "usage: $0 [--build-only | --sysroot]" >&2
    exit 2
    ;;
esac

TARGET=aarch64-unknown-linux-gnu
TARGET_ENV=aarch64_unknown_linux_gnu
CACHE=${FE_AARCH64_DIR:-$ROOT/.local/aarch64}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
SYSROOT="$CACHE/sysroot"
ORT_VERSION=1.31.1
ORT_DIR="$CACHE/onnxruntime-$ORT_VERSION/lib"
# The Jetson's glibc (Ubuntu 22.04). The daemon must not ask for anything newer.
MAX_GLIBC=2.35
FEATURES=cuda

# The Jetson's GStreamer and GLib (Ubuntu 22.04: 1.20.3, 2.72.4). The daemon
# must not call a function that appeared later.
MAX_GSTREAMER=1.20
MAX_GLIB=2.72

# Debian 12 (bookworm) arm64: the same release as the build machine, reachable
# through the Debian mirror. Its GStreamer is 1.22, newer than the Jetson's 1.20:
# the bindings are built without any v1_2x feature, so no call above 1.14 can
# be compiled in (docs/JETSON.md, "Minimum GStreamer version").
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
SYSROOT_PACKAGES=(
  # linking
  libc6-dev libgcc-s1 libstdc++6
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  # elements the tests run: videotestsrc/videoconvert/appsink (base), rtspsrc,
  # rtp depayloaders, jpeg (good), h264parse (bad), x264enc (ugly), avdec_* (libav)
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav
)
# Bump when the way the sysroot is made changes, so cached ones are rebuilt.
SYSROOT_RECIPE=3

HOST_PACKAGES=(
  gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
  qemu-user pkg-config python3 python3-pip ca-certificates
)

# What runs under qemu. Pure unit tests, the tiny Florence-2 through the
# aarch64 ONNX Runtime, real GStreamer pipelines with an RTSP server, and the
# MQTT client against a real (host) mosquitto. Tests that start a second
# aarch64 process (the daemon binary, the publish harness) cannot run: without
# binfmt_misc the host kernel cannot exec an aarch64 binary; see JETSON.md.
TESTS=${FE_AARCH64_TESTS:---lib --test florence2_parity --test ingest_rtsp --test ingest_faults --test publish_broker --test publish_tls --test config_files --test postprocess_golden}
# Left out under qemu (test-name filters, substring match):
# - last_will_…: spawns the publish_harness example (an aarch64 process).
# - h265_over_…: the in-process RTSP server's x265 encoder and the decoder
#   together cannot hold 15 fps under emulation, so the measured frame
#   interval misses its bound; H.264 and MJPEG over the same path run.
# - florence2_parity's full sweeps (every golden case, twice; the batches;
#   the merged-decoder twin): ONNX Runtime's NEON kernels run ~60x slower
#   under qemu than natively (4 s native -> 280 s for the short tests alone).
#   What stays: one frame through all tasks, greedy and beam, on the split
#   decoders (the layout TensorRT uses), preprocessing, and the model checks.
SKIP=${FE_AARCH64_SKIP:-last_will_reads_offline_after_the_process_is_killed h265_over_ greedy_and_beam_match_the_reference batches_match_the_reference_row_for_row tasks_on_one_frame_share_the_vision_encoder_with_the_merged_decoder}

log() { echo "cross-aarch64: $*"; }
die() {
  echo "cross-aarch64: error: $*" >&2
  exit 1
}

sudo_cmd() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_host_packages() {
  local missing=()
  for p in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    sudo_cmd apt-get update -qq
    sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    log "adding the Rust target $TARGET"
    rustup target add "$TARGET"
  fi
}

# apt with a private state: arm64 only, an empty dpkg status (so it resolves
# the whole closure, libc included), its own lists and archives under $CACHE.
apt_private() {
  local d="$CACHE/apt"
  apt-get \
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
    -o Dir::State="$d" -o Dir::State::Lists="$d/lists" -o Dir::State::status="$d/status" \
    -o Dir::Cache="$d" -o Dir::Cache::archives="$d/archives" \
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts="$d/sources.list.d" \
    -o Dir::Etc::Preferences="$d/preferences" -o Dir::Etc::PreferencesParts="$d/preferences.d" \
    -o Debug::NoLocking=true -o APT::Sandbox::User=root \
    "$@"
}

sysroot_stamp() {
  echo "$SYSROOT_RECIPE $SUITE ${SYSROOT_PACKAGES[*]}" | sha256sum | cut -c1-16
}

prepare_sysroot() {
  local stamp
  stamp=$(sysroot_stamp)
  if [ "$(cat "$SYSROOT/.florence-edge-sysroot" 2>/dev/null)" = "$stamp" ]; then
    log "sysroot up to date in $SYSROOT"
    return
  fi
  local d="$CACHE/apt"
  # The GStreamer registry remembers plugins of the old sysroot, failed ones too.
  rm -rf "$SYSROOT" "$d" "$CACHE/gst-registry-aarch64.bin"
  mkdir -p "$d/lists/partial" "$d/archives/partial" "$d/sources.list.d" "$d/preferences.d"
  : >"$d/status"
  : >"$d/preferences"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "$keyring is missing (apt-get install debian-archive-keyring)"
  cat >"$d/sources.list" <<EOF
deb [arch=arm64 signed-by=$keyring] $MIRROR $SUITE main
deb [arch=arm64 signed-by=$keyring] $MIRROR $SUITE-updates main
deb [arch=arm64 signed-by=$keyring] $SECURITY_MIRROR $SUITE-security main
EOF
  log "resolving arm64 packages for the sysroot ($SUITE)"
  apt_private update -qq
  apt_private install --download-only -y -qq --no-install-recommends "${SYSROOT_PACKAGES[@]}" \
    >/dev/null
  local count=0 deb
  mkdir -p "$SYSROOT"
  : >"$CACHE/symbols"
  for deb in "$d"/archives/*.deb; do
    dpkg-deb -x "$deb" "$SYSROOT"
    # Debian's symbols files: the first upstream version of every exported
    # symbol, what check_library_versions() reads.
    dpkg-deb -I "$deb" symbols >>"$CACHE/symbols" 2>/dev/null || true
    count=$((count + 1))
  done
  [ "$count" -gt 0 ] || die "apt downloaded no packages into $d/archives"
  # The sysroot is the cache; the debs would only double it.
  rm -rf "$d/archives"
  log "extracted $count packages into $SYSROOT"
  # Absolute symlinks (libfoo.so -> /lib/aarch64-linux-gnu/libfoo.so.1) would
  # point at the host's x86 files: make them relative inside the sysroot.
  local link target
  while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    ln -sfn --relative "$SYSROOT$target" "$link"
  done < <(find "$SYSROOT" -type l -lname '/*' -print0)
  # Links that dpkg's update-alternatives would make in postinst, which
  # extraction never runs: libblas.so.3 and liblapack.so.3 (needed by
  # libavcodec's dependencies, hence by the avdec_* decoders).
  local multiarch="$SYSROOT/usr/lib/aarch64-linux-gnu" alt lib
  for alt in blas lapack; do
    for lib in "$multiarch/$alt"/lib*.so*; do
      [ -e "$lib" ] || continue
      [ -e "$multiarch/$(basename "$lib")" ] || ln -s "$alt/$(basename "$lib")" "$multiarch/$(basename "$lib")"
    done
  done
  # Executables are of no use here and harmful under qemu: qemu's -L prefix
  # would make a test that runs `openssl` or `kill` find the arm64 one first,
  # which the host kernel cannot exec.
  rm -rf "$SYSROOT"/{bin,sbin,usr/bin,usr/sbin,usr/games} "$SYSROOT"/usr/share/{doc,man,info,locale}
  # ONNX Runtime's cpuinfo reads /proc/cpuinfo at load and crashes on the
  # host's x86 one; qemu -L serves this file in its place.
  write_cpuinfo "$SYSROOT/proc/cpuinfo"
  echo "$stamp" >"$SYSROOT/.florence-edge-sysroot"
}

# Four Cortex-A78AE cores as a Jetson AGX Orin reports them.
write_cpuinfo() {
  mkdir -p "$(dirname "$1")"
  local n cores
  cores=$(nproc)
  : >"$1"
  for ((n = 0; n < cores; n++)); do
    cat >>"$1" <<EOF
processor	: $n
BogoMIPS	: 62.50
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd42
CPU revision	: 1

EOF
  done
}

# The aarch64 CPU build of ONNX Runtime from the PyPI wheel (manylinux_2_28,
# glibc 2.28: runs on the Jetson's 2.35). Only the tests use it; on a Jetson
# the daemon uses the GPU build (docs/JETSON.md).
install_onnxruntime() {
  if [ -f "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" ]; then
    log "aarch64 ONNX Runtime $ORT_VERSION already in $ORT_DIR"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  log "downloading the onnxruntime==$ORT_VERSION manylinux_2_28_aarch64 wheel from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --python-version 3.11 \
    --dest "$tmp" "onnxruntime==$ORT_VERSION"
  python3 - "$tmp" "$ORT_DIR" "$ORT_VERSION" <<'PY'
import glob, os, sys, zipfile
src, dst, version = sys.argv[1:]
os.makedirs(dst, exist_ok=True)
wheel = glob.glob(os.path.join(src, "onnxruntime-*.whl"))[0]
name = "onnxruntime/capi/libonnxruntime.so." + version
with zipfile.ZipFile(wheel) as z, open(os.path.join(dst, os.path.basename(name)), "wb") as f:
    f.write(z.read(name))
PY
  rm -rf "$tmp"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so"
}

cross_env() {
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  # Only the target's link lines see the sysroot; host build scripts and
  # proc-macros keep linking natively.
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=--sysroot=$SYSROOT"
  export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
  export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
  export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
  export PKG_CONFIG_ALLOW_CROSS=1
  export "PKG_CONFIG_SYSROOT_DIR_$TARGET_ENV=$SYSROOT"
  export "PKG_CONFIG_LIBDIR_$TARGET_ENV=$SYSROOT/usr/lib/aarch64-linux-gnu/pkgconfig:$SYSROOT/usr/share/pkgconfig"
  # The sysroot's own loader and libraries (mixing the cross toolchain's ld.so
  # with the sysroot's libc hangs). QEMU_LD_PREFIX is the same for qemu
  # started some other way (binfmt_misc).
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"
  export QEMU_LD_PREFIX="$SYSROOT"
  export QEMU_CPU=${QEMU_CPU:-neoverse-n1}
  # GStreamer under emulation: no forked gst-plugin-scanner (it would be an
  # aarch64 child process), arm64 plugins only, a registry of our own that
  # later runs reuse (the first scan loads every plugin under qemu).
  export GST_REGISTRY_FORK=no
  export GST_REGISTRY_1_0="$CACHE/gst-registry-aarch64.bin"
  export GST_PLUGIN_SYSTEM_PATH_1_0="$SYSROOT/usr/lib/aarch64-linux-gnu/gstreamer-1.0"
  unset GST_PLUGIN_PATH GST_PLUGIN_PATH_1_0 GST_PLUGIN_SCANNER GST_PLUGIN_SCANNER_1_0
  export ORT_DYLIB_PATH="$ORT_DIR/libonnxruntime.so"
}

target_dir() {
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then echo "$CARGO_TARGET_DIR"; else echo "$ROOT/target"; fi
}

build_daemon() {
  log "building the release daemon for $TARGET (features: $FEATURES)"
  cargo build --release --target "$TARGET" --features "$FEATURES" --bin florence-edge
  local bin
  bin="$(target_dir)/$TARGET/release/florence-edge"
  [ -x "$bin" ] || die "no binary at $bin"
  aarch64-linux-gnu-objdump -f "$bin" | grep -q "architecture: aarch64" ||
    die "$bin is not an aarch64 executable"
  local newest
  newest=$(aarch64-linux-gnu-objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' |
    sort -uV | tail -n 1)
  [ -n "$newest" ] || die "found no GLIBC symbol versions in $bin"
  if [ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -n 1)" != "$MAX_GLIBC" ]; then
    aarch64-linux-gnu-objdump -T "$bin" | grep "GLIBC_$newest" >&2
    die "$bin needs glibc $newest; the Jetson (JetPack 6) has $MAX_GLIBC"
  fi
  log "$bin: $(du -h "$bin" | cut -f1), newest glibc symbol version $newest (Jetson: $MAX_GLIBC)"
  check_library_versions "$bin"
}

# Every GStreamer and GLib function the binary imports, looked up in Debian's
# symbols files (which name the upstream version that introduced it): the
# newest must be on the Jetson. A call to a 1.22 function would be caught
# here even though the sysroot's GStreamer is 1.22.
check_library_versions() {
  local imports status=0
  imports=$(mktemp)
  aarch64-linux-gnu-objdump -T "$1" | awk '/\*UND\*/ { print $NF }' >"$imports"
  python3 - "$CACHE/symbols" "$imports" "$MAX_GSTREAMER" "$MAX_GLIB" <<'PY' || status=$?
import re, sys
symbols_file, imports, max_gst, max_glib = sys.argv[1:]
def key(v):
    return [int(x) for x in re.findall(r"\d+", v)[:3]]
first = {}  # symbol -> (library, version)
lib = None
for line in open(symbols_file, encoding="utf-8", errors="replace"):
    if line and not line[0].isspace() and line[0] not in "*|#":
        lib = line.split()[0]
    elif line.startswith(" ") and lib:
        parts = line.split()
        if len(parts) >= 2 and "@" in parts[0]:
            first.setdefault(parts[0].split("@")[0], (lib, parts[1].split("-")[0].split("~")[0]))
newest = {}
for name in open(imports).read().split():
    if name in first:
        lib, ver = first[name]
        if lib not in newest or key(ver) > key(newest[lib][0]):
            newest[lib] = (ver, name)
limits = {"libgst": max_gst, "libglib-2.0": max_glib, "libgobject-2.0": max_glib,
          "libgio-2.0": max_glib, "libgmodule-2.0": max_glib}
bad = False
for lib, (ver, name) in sorted(newest.items()):
    limit = next((v for p, v in limits.items() if lib.startswith(p)), None)
    verdict = ""
    if limit is not None:
        ok = key(ver)[:2] <= key(limit)[:2]
        verdict = f"(Jetson: {limit})" if ok else f"NEWER THAN THE JETSON'S {limit}"
        bad |= not ok
    print(f"cross-aarch64:   {lib}: newest symbol {name} from {ver} {verdict}")
if not any(l.startswith("libgst") for l in newest):
    print("cross-aarch64: error: no GStreamer symbols found; symbols files missing?", file=sys.stderr)
    sys.exit(1)
sys.exit(1 if bad else 0)
PY
  rm -f "$imports"
  [ "$status" -eq 0 ] || die "$1 calls GStreamer/GLib functions the Jetson does not have"
}

run_tests() {
  local log_file status=0 skip_args=() s
  for s in $SKIP; do skip_args+=(--skip "$s"); done
  log "running under qemu-aarch64 ($QEMU_CPU): $TESTS"
  log_file=$(mktemp)
  # Release profile: the tests reuse every dependency the daemon build just
  # compiled, and optimized code is what keeps emulation bearable.
  # shellcheck disable=SC2086 # TESTS is a list of cargo arguments
  cargo test --release --no-fail-fast --target "$TARGET" --features "$FEATURES" $TESTS \
    -- "${skip_args[@]}" 2>&1 | tee "$log_file" || status=$?
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
       END { printf "aarch64 tests under qemu: %d passed, %d failed, %d skipped\n", p, f, s }' "$log_file"
  rm -f "$log_file"
  return $status
}

start=$(date +%s)
install_host_packages
prepare_sysroot
install_onnxruntime
[ "$mode" = "--sysroot" ] && exit 0
cross_env
build_daemon
if [ "$mode" = "all" ]; then
  status=0
  run_tests || status=$?
  log "done in $(($(date +%s) - start)) s"
  exit $status
fi
log "done in $(($(date +%s) - start)) s"
