#!/usr/bin/env bash
# Everything this project measures or tests on a GPU, in as few device calls as possible:
#   bash benchmarks/gpu_suite.sh OUT_DIR [part ...]
#   parts: tests packed profile backbone compiled loader realcheck rpb
#          (not by default:) trace host-profile
#   SPA_SHAPE=WxH:B sets the shape of profile/backbone/compiled/trace (default 1280x800:8);
#   SPA_LABELS=REGEX limits them to the variants whose label matches; SPA_SEEDS="N ..." sets the rpb part's seeds
# Wheels the machine lacks (pycocotools) are installed from .whl/ when present; the Tiny ImageNet
# sample for the real check is read from $SPA_FIXTURES (default .fixtures, a copy of ../shared/fixtures).
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [part ...]}; shift
parts=${*:-tests packed profile backbone compiled loader realcheck rpb}
shape=${SPA_SHAPE:-1280x800:8}; labels=${SPA_LABELS:-}
mkdir -p "$out"
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch, torchvision, triton; print("torch", torch.__version__, "torchvision", torchvision.__version__, "triton", triton.__version__)' | tee -a "$out/gpu.txt"
for part in $parts; do
  echo "=== $part ($(date -u +%T))"
  case $part in
    tests)     timeout 480 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" | tail -25 ;;
    packed)    timeout 90 python3 benchmarks/bench_packed_attention.py --out "$out" 2>&1 | tail -25
               timeout 90 python3 benchmarks/bench_packed_attention.py --capacity budget --out "$out/budget" 2>&1 | tail -25
               timeout 90 python3 benchmarks/bench_packed_attention.py --batch 1 --out "$out/b1" 2>&1 | tail -25
               timeout 60 python3 benchmarks/bench_packed_attention.py --graphs --out "$out/graphs" 2>&1 | tail -12 ;;
    profile)   timeout 200 python3 benchmarks/profile_backbone.py --shape "$shape" --out "$out" \
                 ${labels:+--labels "$labels"} > "$out/profile.log" 2>&1; head -9 "$out/profile_train.txt" ;;
    trace)     timeout 400 python3 benchmarks/profile_backbone.py --shape "$shape" --compile --phases train --trace \
                 --out "$out/trace" ${labels:+--labels "$labels"} > "$out/trace.log" 2>&1
               for t in "$out"/trace/trace_*.json.gz; do echo "$t"; python3 benchmarks/trace_gaps.py "$t" --steps 3 --top 5; done ;;
    host-profile) timeout 300 python3 benchmarks/profile_backbone.py --shape "$shape" --compile --host --phases train \
                 --out "$out/host" ${labels:+--labels "$labels"} > "$out/host_profile.log" 2>&1
               head -9 "$out/host/profile_train_compiled_host.txt" ;;
    # every variant of a group built first and timed in turn (compiled: warmed in parallel processes first)
    backbone)  timeout 400 python3 benchmarks/bench_backbone.py --shape "$shape" --modes eager,graphs --labels "$labels" \
                 --budget 360 --out "$out" --name "backbone_${shape/:/_b}_eager.json" 2>&1 | tail -30 ;;
    compiled)  timeout 560 python3 benchmarks/bench_backbone.py --shape "$shape" --modes compiled --labels "$labels" \
                 --budget 520 --out "$out" --name "backbone_${shape/:/_b}_compiled.json" 2>&1 | tail -20 ;;
    loader)    timeout 90 python3 benchmarks/bench_loader.py --device cuda --out "$out/bench_loader.json" 2>&1 | tail -20 ;;
    realcheck) timeout 520 python3 benchmarks/real_check_ins.py --fixtures "$SPA_FIXTURES/tiny-imagenet-200" --budget-s 95 --out "$out" 2>&1 | tail -30 ;;
    # the accuracy cost of the relative-position bias inside containers (SPT-T, threshold 0.5, 60 epochs):
    # paired seeds, six runs at a time, pooled with the seeds already in benchmarks/results
    rpb)       OMP_NUM_THREADS=2 timeout 570 python3 benchmarks/rpb_accuracy.py --fixtures "$SPA_FIXTURES/tiny-imagenet-200" \
                 --seeds ${SPA_SEEDS:-2 3 4 5 6 7} --parallel 6 --out "$out/rpb" \
                 --include benchmarks/results/real_check/rpb_*_seed*_h200.json 2>&1 | tail -14 ;;
  esac
done
