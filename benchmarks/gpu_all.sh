#!/usr/bin/env bash
# Every GPU figure in the README, in one go (one lease of a GPU box): the GPU-only tests, benchmark
# scripts and a CUDA end-to-end smoke run of extract -> train -> score on a generated benchmark.
#   bash benchmarks/gpu_all.sh [OUTDIR]
#   STEPS="text_encoder train_step" bash benchmarks/gpu_all.sh   # a subset (each step has its limit:
#   the whole script takes more than one 10-minute device call; split it by STEPS)
# Each step has its own time limit, so one failure does not hide the others.
set -u
OUT=${1:-${OUT:-gpu-results}}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src:$PWD/tests"
PY=${PY:-python3}
STEPS=${STEPS:-cuda_tests text_encoder train_step sweep_speed baselines_step score_speed extract_speed predict_speed negatives_speed e2e_cuda}
step() { local name=$1 limit=$2; shift 2; [[ " $STEPS " == *" $name "* ]] || return 0
         echo "=== $name ($(date +%T))"
         timeout "$limit" "$@" 2>&1 | grep -v "^W[0-9]* .*cpp_extension" | tee "$OUT/$name.txt"
         echo "=== $name rc=${PIPESTATUS[0]} ($(date +%T))"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, open_clip, zarr, faiss; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'zarr', zarr.__version__, 'faiss', faiss.__version__)" | tee -a "$OUT/gpu.txt"

# flex / blocks attention and compiled steps against the reference: features, gradients, training
step cuda_tests 300 $PY -m pytest -q -rfE -p no:cacheprovider tests/test_cuda.py
# eager (auto, flex, blocks) and compiled encoders against the full-length path (first calls: compile time)
step text_encoder 240 $PY benchmarks/text_encoder.py --device cuda --bf16 --C 1000 --n-neg 300 \
    --attention auto,flex,blocks --compile flex+default,blocks+default,flex+reduce-overhead --repeats 20
# the loop's step, eager and compiled, against the peers' step; then the real loop
step train_step 300 $PY benchmarks/train_step.py --device cuda --C 1000 --n-neg 300 --batch 32 \
    --attention auto,flex,blocks --compile flex+default,blocks+default,flex+reduce-overhead \
    --loop-variants blocks,flex+default,flex+reduce-overhead
# joint training: ms per step of 1 vs 8 packed grid points, C=1000, Cn=300, random ViT-B-16 (target: 8 <= 2x 1)
step sweep_speed 240 $PY benchmarks/sweep_speed.py --device cuda --synthetic --C 1000 --n-neg 300 --packed 1,8
# every method's batch from the cache (C=1000, Cn=300, Local-Prompt batch 256 x 16 views) vs the peers' own
step baselines_step 420 $PY benchmarks/baselines_step.py --device cuda --iters 5 --warmup 2
step score_speed  80 $PY benchmarks/score_speed.py --device cuda
step extract_speed 140 $PY benchmarks/extract_speed.py --models ViT-B-16 --device cuda --n 2048
# iim predict vs iim extract on the same images (one encoder pass each; predict scores S-MCM on the GPU)
step predict_speed 150 $PY benchmarks/predict_speed.py --models ViT-B-16 --device cuda --n 2048
# iim negatives: mining 10,000 words (packed prompts) vs open_clip encode_text on all 10,000, ViT-B-16, C=1000
step negatives_speed 120 $PY benchmarks/negatives_speed.py --device cuda --ref-words 10000
step e2e_cuda 90 bash -c '
  set -e; W=$(mktemp -d)
  python3 -c "import imagegen; imagegen.make_world(\"$W/world\", train_per_class=8, test_per_class=6)"
  python3 -m iim.cli extract --benchmark $W/world/bench.toml --model iim-test-tiny --pretrained none \
      --shots 4 --seed 1 --views 2 --out $W/cache --device cuda --no-progress
  python3 -m iim.cli train --cache $W/cache --out $W/run --k 8 --n-neg 6 --n-ctx 4 --epochs 3 --batch-size 4 --device cuda --no-progress
  python3 -m iim.cli train --cache $W/cache --out $W/run-flex --k 8 --n-neg 6 --n-ctx 4 --epochs 3 --batch-size 4 --device cuda --no-progress --attention flex --compile reduce-overhead
  python3 -m iim.cli score --run $W/run --k 8 --device cuda
  python3 -m iim.cli predict --run $W/run $W/world/test $W/world/ood --device cuda --no-progress | tail -3
  ls $W/run'
