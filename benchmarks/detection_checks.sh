#!/usr/bin/env bash
# Issue 13's GPU checks in one device call (about 6 minutes on one H200; results only under OUT_DIR):
#   bash benchmarks/detection_checks.sh OUT_DIR [part ...]      parts: tests selection trainer (default: all)
# tests:     overfit real COCO / BDD100K fixture images to box and mask AP (tests/test_detection_gpu.py),
#            jittered batches decoded on the GPU (tests/test_jitter.py)
# selection: the selected share during training, paper gates vs gate prior vs threshold 0.5 (bench_selection.py)
# trainer:   the detection trainer's img/s against a bare model step (bench_trainer.py)
# Fixtures are read from $SPA_FIXTURES (default .fixtures, a copy of ../shared/fixtures); pycocotools
# wheels in .whl/ are installed first (benchmarks/device_env.sh).
set -uo pipefail
out=${1:?usage: detection_checks.sh OUT_DIR [part ...]}; shift
parts=${*:-tests selection trainer}
mkdir -p "$out"
source "$(dirname "$0")/device_env.sh"
export SPA_RESULTS=$out
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for part in $parts; do
  echo "=== $part ($(date -u +%T))"
  case $part in
    tests)     timeout 270 python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/test_detection_gpu.py tests/test_jitter.py 2>&1 \
                 | grep -v "img/s\]" | tee "$out/detection_gpu_tests.log" | tail -15 ;;
    selection) timeout 180 python3 benchmarks/bench_selection.py --fixtures "$SPA_FIXTURES" --out "$out/selection" 2>&1 \
                 | grep -v "img/s\]" | tail -20 ;;
    trainer)   timeout 120 python3 benchmarks/bench_trainer.py --fixtures "$SPA_FIXTURES" --out "$out/trainer" 2>&1 \
                 | grep -v "img/s\]" | tail -8 ;;
  esac
done
