#!/usr/bin/env bash
# The main job on the embedded defaults: Florence-2 <OD> and <CAPTION> on the
# test images with the project's tiny model. (Becomes the daemon on the demo
# configuration once `florence-edge run` lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/florence-edge
[ -x "$bin" ] || cargo build --release
for task in '<OD>' '<CAPTION>'; do
  "$bin" infer --model tests/fixtures/tiny-florence2 --task "$task" --max-new-tokens 24 tests/fixtures/images/*.png
done
