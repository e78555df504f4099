#!/usr/bin/env bash
# Builds the shim and the GPU test and benchmark programs into ${GPU_BUILD:-build-gpu}.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${GPU_BUILD:-build-gpu}
[ -f "$build/build.ninja" ] || meson setup "$build" -Dtests=disabled >/dev/null
ninja -C "$build" >"$build.log" 2>&1 || { tail -20 "$build.log"; exit 1; }
echo "gpu-build: $build, $(grep -m1 'link-time optimization' "$build/meson-logs/meson-log.txt" | tr -s ' ')"
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
flags=(-O2 -std=c++17 -arch=sm_90)
"$nvcc" "${flags[@]}" tests/gpu/alloc_kernel.cu -o "$build/alloc_kernel_static"
"$nvcc" "${flags[@]}" -cudart shared tests/gpu/alloc_kernel.cu -o "$build/alloc_kernel_shared"
"$nvcc" "${flags[@]}" tests/gpu/reuse_safety.cu -o "$build/reuse_safety"
"$nvcc" "${flags[@]}" bench/bench_alloc.cu -o "$build/bench_alloc"
"$nvcc" "${flags[@]}" tests/gpu/two_devices.cu -o "$build/two_devices"
"$nvcc" "${flags[@]}" tests/gpu/device_reset.cu -o "$build/device_reset"
"$nvcc" "${flags[@]}" tests/gpu/graph_capture.cu -o "$build/graph_capture"
"$nvcc" "${flags[@]}" tests/gpu/context_destroy.cu -lcuda -o "$build/context_destroy"
"$nvcc" "${flags[@]}" tests/gpu/pointer_attributes.cu -lcuda -o "$build/pointer_attributes"
# The benchmark's floor (bench/floor.c): the runtime's share of a pair, with an empty allocator.
cc -O2 -shared -fPIC -I"$(meson configure "$build" | awk '$1 == "toolkit_include_dir" {print $2}')" \
  bench/floor.c -o "$build/libfloor.so" -ldl
"$nvcc" "${flags[@]}" tests/gpu/host_pool.cu -o "$build/host_pool"
"$nvcc" "${flags[@]}" tests/gpu/device_limit.cu -o "$build/device_limit"
