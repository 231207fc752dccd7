#!/usr/bin/env bash
# Everything this project measures or tests on a GPU, in one call of the device machine:
#   bash benchmarks/gpu_suite.sh OUT_DIR [part ...]      (parts: tests packed backbone loader realcheck)
# Wheels that the machine lacks (pycocotools) are installed from .whl/ when present.
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [part ...]}; shift
parts=${*:-tests packed backbone loader realcheck}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' | tee -a "$out/gpu.txt"
for part in $parts; do
  echo "=== $part ($(date -u +%T))"
  case $part in
    tests)     python3 -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.log" | tail -15 ;;
    packed)    python3 benchmarks/bench_packed_attention.py --out "$out" 2>&1 | tail -30 ;;
    backbone)  python3 benchmarks/bench_backbone.py --out "$out" 2>&1 | tail -40 ;;
    loader)    python3 benchmarks/bench_loader.py --out "$out" 2>&1 | tail -20 ;;
    realcheck) python3 benchmarks/real_check_ins.py --fixtures "${SPA_FIXTURES:-shared/fixtures}/tiny-imagenet-200" --out "$out" 2>&1 | tail -30 ;;
  esac
done
