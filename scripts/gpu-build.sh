#!/usr/bin/env bash
# Builds the shim and the GPU test and benchmark programs into ${GPUSHIM_BUILD:-build-gpu}.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${GPUSHIM_BUILD:-build-gpu}
[ -f "$build/build.ninja" ] || meson setup "$build" -Dtests=disabled >/dev/null
ninja -C "$build" >/dev/null
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
flags=(-O2 -std=c++17 -arch=sm_90)
"$nvcc" "${flags[@]}" tests/gpu/alloc_kernel.cu -o "$build/alloc_kernel_static"
"$nvcc" "${flags[@]}" -cudart shared tests/gpu/alloc_kernel.cu -o "$build/alloc_kernel_shared"
"$nvcc" "${flags[@]}" tests/gpu/reuse_safety.cu -o "$build/reuse_safety"
"$nvcc" "${flags[@]}" bench/bench_alloc.cu -o "$build/bench_alloc"
"$nvcc" "${flags[@]}" tests/gpu/two_devices.cu -o "$build/two_devices"
