#!/usr/bin/env bash
# The demo, on a fresh Debian 12 machine with the CUDA Toolkit in /usr/local/cuda: installs what
# is missing (Debian packages), builds gpushim, and runs a sample program under the shim in pool
# mode, with its exit report. On a machine without a GPU the sample runs against the test driver
# (a libcuda.so.1 made of host memory, built with the tests) and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v meson >/dev/null || missing+=(meson)
command -v ninja >/dev/null || missing+=(ninja-build)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
pkg-config --exists cmocka 2>/dev/null || missing+=(libcmocka-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "demo: installing ${missing[*]}"
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build=build-demo
[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" >/dev/null
shim=$PWD/$build/src/libgpushim.so
echo "demo: built $shim"

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "demo: GPU found: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  /usr/local/cuda/bin/nvcc -O2 tests/gpu/alloc_kernel.cu -o "$build/alloc_kernel"
  echo "demo: \$ LD_PRELOAD=$shim GPUSHIM_MODE=pool $build/alloc_kernel 10"
  LD_PRELOAD="$shim" GPUSHIM_MODE=pool "$build/alloc_kernel" 10
else
  echo "demo: no GPU here: running the sample against the test driver ($build/tests/fake_driver/libcuda.so.1, host memory)"
  echo "demo: \$ LD_PRELOAD=$shim GPUSHIM_MODE=pool $build/tests/runtime_like basic 10"
  LD_LIBRARY_PATH="$PWD/$build/tests/fake_driver" LD_PRELOAD="$shim" GPUSHIM_MODE=pool \
    "$build/tests/runtime_like" basic 10
fi
