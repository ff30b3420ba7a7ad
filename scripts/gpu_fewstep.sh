#!/usr/bin/env bash
# Few-step checks on a CUDA machine (a few minutes): the few-step tests with accelerate on the GPU, then 20 steps of
# each demo recipe in fp16 mixed precision (frozen teacher in fp16, trainable weights in fp32), each exported and
# loaded back. Run from the repository root: bash scripts/gpu_fewstep.sh
set -euo pipefail
export OUT="${OUT:-outputs/gpu-fewstep}"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0))
PY
python -m pytest -q tests/training/test_fewstep.py
for cfg in fewstep-demo-lcm fewstep-demo-lcm-lora fewstep-demo-sr; do
  python -m training.fewstep --config "configs/$cfg.toml" --steps 20 --mixed_precision fp16 --validate_every 10 \
    --checkpoint_every 10 --output_dir "$OUT/$cfg"
  python -m training.fewstep --config "configs/$cfg.toml" --steps 22 --mixed_precision fp16 --output_dir "$OUT/$cfg" \
    --resume latest
done
echo "gpu few-step checks passed"
