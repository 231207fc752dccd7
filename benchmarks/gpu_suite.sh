#!/usr/bin/env bash
# Everything this project measures or tests on a GPU, in as few device calls as possible:
#   bash benchmarks/gpu_suite.sh OUT_DIR [part ...]
#   parts: tests packed profile backbone compiled-inference compiled-train loader realcheck rpb
#          (not by default:) interleaved-compiled-train-{224,1280} cudagraphs-train-{224,1280} host-profile
#   SPA_LABELS=REGEX limits the interleaved/cudagraphs parts to the rows whose label matches;
#   SPA_SEEDS="N ..." sets the rpb part's seeds
# Wheels the machine lacks (pycocotools) are installed from .whl/ when present; the Tiny ImageNet
# sample for the real check is read from $SPA_FIXTURES (default .fixtures, a copy of ../shared/fixtures).
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [part ...]}; shift
parts=${*:-tests packed profile backbone compiled-inference compiled-train loader realcheck rpb}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SPA_FIXTURES=${SPA_FIXTURES:-$PWD/.fixtures}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch, torchvision, triton; print("torch", torch.__version__, "torchvision", torchvision.__version__, "triton", triton.__version__)' | tee -a "$out/gpu.txt"
for part in $parts; do
  echo "=== $part ($(date -u +%T))"
  case $part in
    tests)     timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" | tail -25 ;;
    packed)    timeout 60 python3 benchmarks/bench_packed_attention.py --out "$out" 2>&1 | tail -25
               timeout 40 python3 benchmarks/bench_packed_attention.py --graphs --out "$out/graphs" 2>&1 | tail -12 ;;
    profile)   timeout 120 python3 benchmarks/profile_backbone.py --out "$out" > "$out/profile.log" 2>&1; tail -5 "$out/profile.log" ;;
    backbone)  timeout 250 python3 benchmarks/bench_backbone.py --parts eager,sweep --repeat 2 --budget 220 --out "$out" 2>&1 | tail -40 ;;
    # the training ratios timed in turn, with each step's host time and a trace (about 70 s of compiling
    # per model); cudagraphs-*: the same under CUDA graphs, what a step gains when launches cost nothing
    interleaved-compiled-train-*|cudagraphs-train-*)
               case $part in
                 cudagraphs-*) flags=(--compile-mode reduce-overhead --labels "${SPA_LABELS:-^(swin_t|spt_t_gt25_static)$}") ;;
                 *)            flags=(--trace --labels "${SPA_LABELS:-}") ;;
               esac
               timeout 560 python3 benchmarks/bench_backbone.py --parts interleaved-compiled-train --sizes "${part##*-}" \
                 --rounds 5 "${flags[@]}" --out "$out/$part" 2>&1 | tail -40 ;;
    host-profile) timeout 300 python3 benchmarks/profile_backbone.py --compile --host --phases train --out "$out/host" \
                 > "$out/host_profile.log" 2>&1; head -9 "$out/host/profile_train_compiled_host.txt" ;;
    compiled-*) timeout 560 python3 benchmarks/bench_backbone.py --parts "$part" --budget 520 --out "$out/$part" 2>&1 | tail -20 ;;
    loader)    timeout 90 python3 benchmarks/bench_loader.py --device cuda --out "$out/bench_loader.json" 2>&1 | tail -20 ;;
    realcheck) timeout 520 python3 benchmarks/real_check_ins.py --fixtures "$SPA_FIXTURES/tiny-imagenet-200" --budget-s 95 --out "$out" 2>&1 | tail -30 ;;
    # the accuracy cost of the relative-position bias inside containers (SPT-T, threshold 0.5, 60 epochs):
    # paired seeds, six runs at a time, pooled with the seeds already in benchmarks/results
    rpb)       OMP_NUM_THREADS=2 timeout 570 python3 benchmarks/rpb_accuracy.py --fixtures "$SPA_FIXTURES/tiny-imagenet-200" \
                 --seeds ${SPA_SEEDS:-2 3 4 5 6 7} --parallel 6 --out "$out/rpb" \
                 --include benchmarks/results/real_check/rpb_*_seed*_h200.json 2>&1 | tail -14 ;;
  esac
done
