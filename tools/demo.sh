#!/usr/bin/env bash
# The main job on the embedded defaults: `florence-edge run` on
# configs/demo.toml (two GStreamer test cameras, the project's tiny
# Florence-2) publishing to a local mosquitto started here on a free port,
# with mosquitto_sub printing what arrives. Stops after DEMO_SECONDS (20);
# DEMO_SECONDS=0 runs until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/florence-edge
[ -x "$bin" ] || cargo build --release
seconds=${DEMO_SECONDS:-20}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

if [ -z "${FLORENCE_EDGE__MQTT__URL:-}" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mosquitto -p "$port" >/dev/null 2>&1 &
  pids+=($!)
  export FLORENCE_EDGE__MQTT__URL="mqtt://127.0.0.1:$port"
  sleep 0.5
  echo "demo: started mosquitto on 127.0.0.1:$port"
fi
hostport=${FLORENCE_EDGE__MQTT__URL#*://}
mosquitto_sub -h "${hostport%:*}" -p "${hostport##*:}" -t 'florence-edge/#' -v &
pids+=($!)

"$bin" validate --config configs/demo.toml --no-files
"$bin" run --config configs/demo.toml &
daemon=$!
if [ "$seconds" -gt 0 ]; then
  sleep "$seconds"
  kill -TERM "$daemon"
fi
wait "$daemon"
sleep 0.5
