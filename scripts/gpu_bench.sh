#!/usr/bin/env bash
# GPU speed table of the family: SDXL, SSD-1B and Segmind-Vega at 1024², 30 steps, fp16, each without and with
# torch.compile and feature reuse, after a warm-up, models and options taking turns (python -m studio bench options:
# every (model, option) gets one untimed warm-up call — loading, compiling — then PROMPTS timed images each).
#
#   bash scripts/gpu_bench.sh                      # about 10 minutes on one H100/H200 with random weights
#   WEIGHTS=hub bash scripts/gpu_bench.sh          # the released weights from the Hugging Face hub (~15 GB download)
#
# Weights: WEIGHTS=auto (default) uses the hub when it answers, else random weights on the real shapes in an offline
# cache laid out like the hub repos (studio.bench.family.real_cache: speed depends on shapes, not values; the SSIM
# column is then meaningless). Environment overrides (defaults): SIZE (1024), STEPS (30), PROMPTS (3, the timed
# repetitions), DTYPE (fp16), OPTIONS (the option list, see below), CONFIGS (assets/configs: the released configs,
# used for random weights), WORK (a new temporary folder), ALLOW_CPU=1 (dry run on a CPU, e.g. with a tiny CONFIGS).
# Writes $WORK/gpu-bench.json (the full report, with the command line and the GPU's name) and prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
SIZE=${SIZE:-1024}
STEPS=${STEPS:-30}
PROMPTS=${PROMPTS:-3}
DTYPE=${DTYPE:-fp16}
WEIGHTS=${WEIGHTS:-auto}
CONFIGS=${CONFIGS:-assets/configs}
OPTIONS=${OPTIONS:-"compile=regional feature_reuse=3 compile=regional,feature_reuse=3 compile=full"}
WORK=${WORK:-$(mktemp -d /tmp/studio-gpu-bench.XXXXXX)}
mkdir -p "$WORK"
start=$SECONDS

if ! python -c "import diffusers, transformers, safetensors, accelerate, peft, psutil" 2>/dev/null; then
    echo "== installing requirements.txt"
    python -m pip install -q -r requirements.txt
fi
if [ "${ALLOW_CPU:-0}" != 1 ]; then
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_bench: no CUDA device')"
fi
python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU dry run')"

if [ "$WEIGHTS" = auto ]; then
    if timeout 20 python -c "from huggingface_hub import model_info; model_info('segmind/Segmind-Vega')" \
            >/dev/null 2>&1; then
        WEIGHTS=hub
    else
        WEIGHTS=random
    fi
fi
case "$WEIGHTS" in
    hub) echo "== weights: the released ones from the hub (downloaded once into the Hugging Face cache)" ;;
    random)
        echo "== weights: random, on the shapes of $CONFIGS (offline hub cache under $WORK/hub)"
        python -c "import sys; from studio.bench.family import real_cache; real_cache(sys.argv[1], sys.argv[2], sys.argv[3])" \
            "$WORK" "$DTYPE" "$CONFIGS"
        export HF_HUB_CACHE="$WORK/hub" HF_HUB_OFFLINE=1 ;;
    *) echo "gpu_bench: WEIGHTS must be auto, hub or random; got $WEIGHTS" >&2; exit 2 ;;
esac

option_args=()
for option in $OPTIONS; do option_args+=(--option "$option"); done
echo "== bench options: $SIZE² × $STEPS steps, $DTYPE, $PROMPTS prompts, options: default $OPTIONS ($((SECONDS - start)) s so far)"
python -m studio bench options --model sdxl --model ssd-1b --model vega --size "$SIZE" --steps "$STEPS" \
    --dtype "$DTYPE" --prompts "$PROMPTS" "${option_args[@]}" --out "$WORK/gpu-bench.json" > "$WORK/table.txt"

python - "$WORK/gpu-bench.json" "$WEIGHTS" "$((SECONDS - start))" <<'EOF'
import json, sys
report, weights, seconds = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
env = report["environment_before"]
print(f"\n{env.get('gpu', env['device'])}, torch {env['torch']}, {report['dtype']}, "
      f"{report['request']['width'] or 'native'} px, {report['request']['steps']} steps, CFG "
      f"{report['request']['guidance']}, {report['prompts']} timed images per cell, {weights} weights")
rows = [("model", "option", "median s", "speed-up", "vs SDXL", "compile s", "SSIM")]
for model, options in report["results"].items():
    for label, r in options.items():
        rows.append((model, label, f"{r['latency']['median_s']:.3f}", f"{r['speedup']:.2f}x",
                     f"{r['speedup_vs_first_default']:.2f}x", f"{r['compile_s']:.0f}" if "compile_s" in r else "",
                     f"{r['quality']['ssim_mean']:.3f}" if weights == "hub" else "n/a"))
for model, skipped in report["skipped"].items():
    for label, reason in skipped.items():
        rows.append((model, label, "skipped", reason[:60], "", "", ""))
width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for i, r in enumerate(rows):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, width)) + " |")
    if i == 0:
        print("|" + "|".join("-" * (w + 2) for w in width) + "|")
print(f"(total {seconds} s; report {sys.argv[1]}; command: {report['command']})")
EOF
