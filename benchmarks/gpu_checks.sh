#!/usr/bin/env bash
# The GPU checks, in one call on a GPU machine with torch preinstalled (no network needed):
#   1. training step time of LCR over MoCo v2 on CUDA (bf16 autocast, channels_last), ResNet-18/112 and ResNet-50/224
#   2. LCR vs MoCo v2 vs supervised on the synthetic benchmark, 3 seeds, then ablations while time remains
# Results go to $OUT (default /tmp/gpu_out). Run from the repository root:
#   pip wheel --no-deps -w .whl .        (here: the package as a wheel; carry .whl to the device)
#   bash benchmarks/gpu_checks.sh [BENCH_SECONDS]
set -u
export PYTHONUNBUFFERED=1
REPO=$(pwd)
OUT=${OUT:-/tmp/gpu_out}
BENCH_SECONDS=${1:-250}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --target /tmp/site "$REPO"/.whl/lcr_sdk-*.whl || exit 1
export PYTHONPATH=/tmp/site
cd /tmp  # so `python -m lcr_sdk.cli` finds the installed package, not the source tree's lcr_sdk/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
python3 "$REPO/benchmarks/bench_train_step.py" --device cuda --arch resnet18 --image-size 112 --batch 256 \
  --steps 5 --rounds 5 --json "$OUT/step_resnet18.json"
python3 "$REPO/benchmarks/bench_train_step.py" --device cuda --arch resnet50 --image-size 224 --batch 64 \
  --steps 5 --rounds 5 --json "$OUT/step_resnet50.json"
BENCH=(--out /tmp/bench --device cuda --train-per-class 250 --test-per-class 50 --epochs 30 --batch-size 256
       --eval-every 10 --seeds 0 1 2 --ablation-seeds 0)
timeout "$BENCH_SECONDS" python3 "$REPO/benchmarks/bench_lcr_vs_moco.py" "${BENCH[@]}" --parallel 4 --threads 3 \
  --deadline $((BENCH_SECONDS * 6 / 10))
python3 "$REPO/benchmarks/bench_lcr_vs_moco.py" "${BENCH[@]}" --table-only | tee "$OUT/bench_table.md"
tar czf "$OUT/bench_runs.tgz" -C /tmp/bench --exclude='*.pt' --exclude=data .
