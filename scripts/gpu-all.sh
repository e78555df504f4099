#!/usr/bin/env bash
# Everything a GPU machine can show, in one call: the check, then the benchmarks.
# Script knobs (GPU_BUILD, BENCH_DEVICE, PAIR_ROUNDS, TRACE_ROUNDS) are not GPUSHIM_*: the shim
# stops a program at start on a GPUSHIM_ variable it does not know, and the programs run here
# inherit the environment.
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpushim-out}; mkdir -p "$out"
bash scripts/gpu-check.sh "$@" 2>&1 | tee "$out/gpu-check.txt"
# One GPU visible for the timings: a one-device process skips a driver call per allocation.
CUDA_VISIBLE_DEVICES=${BENCH_DEVICE:-0} bash scripts/gpu-bench.sh 2>&1 | tee "$out/gpu-bench.txt"
CUDA_VISIBLE_DEVICES=${BENCH_DEVICE:-0} bash scripts/gpu-observe.sh 2>&1 | tee "$out/gpu-observe.txt"
