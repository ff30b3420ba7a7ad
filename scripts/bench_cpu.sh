#!/usr/bin/env bash
# Every CPU benchmark behind the README's speed tables, one after the other, then the README blocks rewritten from
# the reports. Run it on a quiet machine (nothing else running): each report records the load average around it.
#   bash scripts/bench_cpu.sh            # about 40 minutes on a quiet 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
b() { echo "== python -m studio bench $*" >&2; python -m studio bench "$@" > /dev/null; }
b unet --resolution 256 --dtype fp32 --threads 2 --repeats 7 --json --out assets/bench/unet-256-fp32-r7.json
b memory --out assets/bench/memory-demo.json
b side-by-side --threads 1 --repeats 11 --out assets/bench/side-by-side-demo.json
b options --model demo-teacher --option feature_reuse=2 --option feature_reuse=3 --option feature_reuse=4 \
  --option feature_reuse=5 --prompts 96 --max-minutes 45 --threads 1 --out assets/bench/feature-reuse-demo.json
b options --model demo-ssd --model demo-vega --option feature_reuse=2 --option feature_reuse=3 --prompts 96 \
  --max-minutes 42 --threads 1 --out assets/bench/feature-reuse-students.json
b options --model demo-teacher --option attention=classic --option channels_last --option fuse_qkv \
  --option vae_decode=tiled --option vae=taesdxl --option low_vram --prompts 96 --max-minutes 35 --threads 1 \
  --out assets/bench/options-demo-teacher.json
b options --model demo-teacher --option compile=regional --option compile=full --option compile=regional,feature_reuse=3 \
  --prompts 24 --max-minutes 15 --threads 1 --out assets/bench/compile-demo-teacher.json
python -m studio bench readme
