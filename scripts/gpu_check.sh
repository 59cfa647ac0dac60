#!/usr/bin/env bash
# GPU check (issue 16): the gpu-default recipe with the ImageNet EfficientNet-Lite2 tower on a CUDA machine.
# 1. pairs/s and memory of one training step under bf16 autocast (scripts/bench_train_configs.py);
# 2. a short real run on MedPix 2.0 train (2 epochs) with GPU utilisation and memory sampled every 5 s;
# 3. its dev-split evaluation. Every step's output goes to $OUT (default runs/gpu-check); a failing step
#    is logged and the next one still runs, since the first real GPU run is meant to find failures.
# Usage: bash scripts/gpu_check.sh [MEDPIX_FOLDER]   (default ../shared/data/medpix-2.0)
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/medpix-2.0}
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"
[ -x .venv/bin/python ] || bash scripts/setup.sh > "$OUT/setup.log" 2>&1
.venv/bin/python -c "import torch; print('cuda', torch.cuda.is_available(), torch.version.cuda)" | tee "$OUT/torch.txt"

.venv/bin/python scripts/bench_train_configs.py --configs gpu-default --device cuda --steps 10 --peak-tflops 989 \
  > "$OUT/step_bench.md" 2> "$OUT/step_bench.err" || echo "step benchmark failed (rc $?)" | tee -a "$OUT/failures.txt"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 5 > "$OUT/nvidia-smi.csv" &
SMI=$!
START=$(date +%s)
.venv/bin/medcm train --data "$DATA" --format medpix --split train --config gpu-default --epochs 2 \
  --out "$OUT/run" --quiet > "$OUT/train.log" 2>&1 || echo "train failed (rc $?)" | tee -a "$OUT/failures.txt"
echo "train wall seconds: $(( $(date +%s) - START ))" | tee "$OUT/train_time.txt"
kill "$SMI" 2>/dev/null
.venv/bin/medcm eval --checkpoint "$OUT/run" --pool-data "$DATA" --pool-split train --query-data "$DATA" \
  --query-split dev --out "$OUT/eval-dev.json" --quiet > "$OUT/eval.log" 2>&1 \
  || echo "eval failed (rc $?)" | tee -a "$OUT/failures.txt"
awk -F', ' '{gsub(/ %/,"",$2); gsub(/ MiB/,"",$3); u+=$2; if ($3>m) m=$3; n++} END {if (n) printf "GPU utilisation mean %.0f%%, memory peak %d MiB over %d samples\n", u/n, m, n}' \
  "$OUT/nvidia-smi.csv" | tee "$OUT/utilisation.txt"
