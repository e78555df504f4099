#!/usr/bin/env bash
# Everything a GPU machine can show, in one call: the check, then the benchmarks.
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpushim-out}; mkdir -p "$out"
bash scripts/gpu-check.sh "$@" 2>&1 | tee "$out/gpu-check.txt"
bash scripts/gpu-bench.sh 2>&1 | tee "$out/gpu-bench.txt"
