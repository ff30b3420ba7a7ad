#!/usr/bin/env bash
# GPU check of the real-model path (SDXL, SSD-1B, Vega on their real shapes, random weights, offline hub cache):
#   1. smoke: each model built from assets/configs, laid out like its hub repo, loaded through ModelCache in fp16 on
#      CUDA, 2 steps at 1024²: params, resident bytes, the UNets in memory (a student must hold no SDXL UNet), times;
#   2. side by side at 1024² × 30 steps (python -m studio bench: warm-up excluded, models interleaved, 3 repeats);
#   3. out-of-memory recovery: a 24 GB card emulated (STUDIO_GPU_MEMORY_GB=24), 2048² × 8 images per model with
#      SDXL then Vega: the first try runs out of memory, the others are evicted, the retry decodes in tiles — it
#      succeeds or ends with the clear message, and the next model still runs;
#   4. GPU handover: the app's model cache on the GPU is emptied before a training job starts there.
# Prints one table. About 5 minutes on one H100/H200 (most of it writing ~11 GB of random fp16 weights).
# Needs a CUDA build of torch with requirements.txt installed; no network. Usage: bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$(mktemp -d /tmp/studio-gpu-check.XXXXXX)}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
start=$SECONDS

echo "== 1/4 smoke (fp16, CUDA, 1024², 2 steps) under $WORK"
python -m studio smoke --model sdxl --model ssd-1b --model vega --dtype fp16 --device cuda --size 1024 --steps 2 \
    --workdir "$WORK/smoke" --json > "$WORK/smoke.json"
export HF_HUB_CACHE="$WORK/smoke/hub" HF_HUB_OFFLINE=1

echo "== 2/4 side by side 1024² × 30 steps ($((SECONDS - start)) s so far)"
python -m studio bench --model sdxl --model ssd-1b --model vega --width 1024 --height 1024 --steps 30 \
    --repeats 3 --warmup 1 --json > "$WORK/bench.json"

echo "== 3/4 out-of-memory recovery on an emulated 24 GB card ($((SECONDS - start)) s so far)"
STUDIO_GPU_MEMORY_GB=24 python -m studio generate --model sdxl --model vega --prompt "a lighthouse at dusk" \
    --width 2048 --height 2048 --batch-size 8 --steps 2 --seed 1 --out "$WORK/oom" > "$WORK/oom.txt" \
    2> "$WORK/oom.err" || true

echo "== 4/4 a training job takes the GPU: the app's models are unloaded first ($((SECONDS - start)) s so far)"
python - > "$WORK/handover.txt" <<'EOF'
import torch
from studio.jobs.runner import Job, gpu_handover
from studio.loading import ModelCache
cache = ModelCache()
cache.get("vega")
before = torch.cuda.memory_allocated()
note = gpu_handover(cache)(Job(id="check", kind="distill", name="check", slot=0))
print(f"{before / 2**30:.2f} GiB allocated before, {torch.cuda.memory_allocated() / 2**30:.2f} GiB after; {note!r}")
EOF

python - "$WORK" "$((SECONDS - start))" <<'EOF'
import json, sys
from pathlib import Path
work, seconds = Path(sys.argv[1]), sys.argv[2]
gib = 2 ** 30
rows = [("check", "model", "result")]
for r in json.loads((work / "smoke.json").read_text()):
    rows.append(("smoke fp16 1024² ×2", r["model"],
                 f"UNet {r['params']['unet']:,} params; resident {r['resident_bytes'] / gib:.2f} GiB "
                 f"(UNet {r['component_bytes']['unet'] / gib:.2f}); UNets in memory "
                 f"{[f'{n:,}' for n in r['unets_in_memory']]}; load {r['load_s']} s; 2 steps {r['generate_s']} s; "
                 f"peak added {r['generate_peak_added_bytes'] / gib:.1f} GiB; image std {r['image_std']}"))
for r in json.loads((work / "bench.json").read_text()):
    rows.append(("1024² × 30 steps", r["model"],
                 f"median {r['median latency (s)']} s (min {r['min (s)']}); speed-up {r['speed-up vs first']}×; "
                 f"weights {r['weights (MB)'] / 1024:.2f} GiB; peak added {r['peak added (MB)'] / 1024:.2f} GiB"))
text = (work / "oom.txt").read_text()
start = text.find("[\n  {")  # the stats JSON after the PNG paths
stats = json.loads(text[start:]) if start >= 0 else []
for r in stats:
    rows.append(("OOM 24 GB, 2048² × 8", r["model"], r["note"] or f"ok in {r['latency (s)']} s, no retry needed"))
if not stats:
    rows.append(("OOM 24 GB, 2048² × 8", "-", "no stats: " + (work / "oom.err").read_text()[-300:]))
rows.append(("GPU handover to a job", "vega", (work / "handover.txt").read_text().strip()))
width = [max(len(str(r[i])) for r in rows) for i in range(2)]
for r in rows:
    print(f"| {r[0]:<{width[0]}} | {r[1]:<{width[1]}} | {r[2]} |")
print(f"(total {seconds} s; work folder {work})")
EOF
