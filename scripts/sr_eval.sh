#!/usr/bin/env bash
# Score one conditional (demo-sr style) model folder exactly as `python -m training.fewstep report --only sr` scores a
# row (the same 96 images, seeds and the folder's recommended guidance), without touching the report: to compare a
# try with the shipped model before shipping it.   scripts/sr_eval.sh FOLDER [STEPS...]   (default: 4)
set -euo pipefail
folder=$1
shift
OMP_NUM_THREADS=${THREADS:-1} nice -n "${NICE:-10}" python - "$folder" "${@:-4}" <<'PY'
import sys

import torch
from diffusers import StableDiffusionXLPipeline

from studio.fewstep import load_fewstep_pipeline, recommended_settings
from training.fewstep_eval import MODELS, evaluate_sr, sr_items

folder, steps = sys.argv[1], [int(s) for s in sys.argv[2:]]
pipe = load_fewstep_pipeline(folder, StableDiffusionXLPipeline.from_pretrained(MODELS["teacher"]))
items, guidance = sr_items(96), recommended_settings(folder)["guidance"]
for s in steps:
    r = evaluate_sr(pipe, items, steps=s, guidance=guidance)[0]
    print(f"{folder} steps {s}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, all correct {100 * r['all']:.1f} %")
PY
