#!/usr/bin/env bash
# Train one demo-sr model on the CPU (1 thread, niced) and ship it: its exported folder (fp16 safetensors), its loss
# curve and a train.log whose tail is the CLI's "done:" line and /usr/bin/time's line (what
# `python -m training.fewstep report` reads for the training cost).
#   scripts/train_sr.sh configs/fewstep-demo-sr-task.toml      runs/sr/undistilled assets/demo/sr/baselines/undistilled
#   scripts/train_sr.sh configs/fewstep-demo-sr.toml           runs/sr/single      assets/demo/sr
#   scripts/train_sr.sh configs/fewstep-demo-sr-two-stage.toml runs/sr/two-stage   assets/demo/sr/baselines/two-stage
# Extra arguments are config overrides (--lambda_task 2.0 ...), recorded in train.log. THREADS=2 (default 1) sets
# the torch / OpenMP thread count, NICE=5 (default 19) the niceness.
set -euo pipefail
threads=${THREADS:-1} niceness=${NICE:-19}
config=$1 run=$2 dest=$3
shift 3
mkdir -p "$run" "$dest"
cmd=(python -m training.fewstep --config "$config" --output_dir "$run" "$@")
log="$run.log"
OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads nice -n "$niceness" /usr/bin/time -o "$run.time" \
    -f "TIME %e s wall, %U s user, %S s sys" "${cmd[@]}" > "$log" 2>&1
cp -r "$run"/final/. "$dest"/
[ -f "$run/log.csv" ] && cp "$run/log.csv" "$dest/loss.csv"
{ echo "# OMP_NUM_THREADS=$threads nice -n $niceness /usr/bin/time -f '...' ${cmd[*]}"; grep -a -o "done: .*" "$log" | tail -1
  cat "$run.time"; } > "$dest/train.log"
cat "$dest/train.log"
