#!/usr/bin/env bash
# The GPU check: real programs under the shim, each with its own result check, the number of
# allocations the shim's report counted, and the kind of memory their buffers got (device, or
# managed in managed mode). One command on a GPU machine; prints a summary table last.
#   scripts/gpu-check.sh [MODE ...]      (default: off pool managed)
# Managed-mode runs always set GPUSHIM_MANAGED_LIMIT (25% of the device): oversubscribing a
# shared GPU can stall it for everyone.
set -u
cd "$(dirname "$0")/.."
build=${GPU_BUILD:-build-gpu}
bash scripts/gpu-build.sh || exit 1
shim=$PWD/$build/src/libgpushim.so
modes=${*:-off pool managed}
export GPUSHIM_MANAGED_LIMIT=25%
work=$(mktemp -d)
table=()
failures=0

# run_case NAME EXPECTED_ALLOCATIONS MODE [VAR=VALUE ...] -- COMMAND ...
run_case() {
  local name=$1 expected=$2 mode=$3; shift 3
  local env=(); while [ "$1" != "--" ]; do env+=("$1"); shift; done; shift
  local dir=$work/$name-$mode; mkdir -p "$dir"
  env "${env[@]}" LD_PRELOAD="$shim" GPUSHIM_MODE="$mode" GPUSHIM_REPORT="$dir/report-%p.txt" \
    PYTHONUNBUFFERED=1 "$@" >"$dir/out.txt" 2>"$dir/err.txt"
  local rc=$?
  local check; check=$(grep -E '^(PASS|FAIL)' "$dir/out.txt" | tail -1)
  local counted; counted=$(cat "$dir"/report-*.txt 2>/dev/null |
    sed -n 's/^gpushim: device [0-9]*: \([0-9]*\) allocations.*/\1/p' | awk '{s += $1} END {print s + 0}')
  local verdict=ok
  if [ $rc -ne 0 ] || [[ "$check" != PASS* ]]; then verdict=FAIL; fi
  local memory; memory=$(sed -n 's/.*memory \([a-z]*\).*/\1/p' <<<"$check")
  local want=device; [ "$mode" = managed ] && want=managed
  [ "$memory" = "$want" ] || verdict=FAIL
  if [ "$expected" = any ]; then [ "$counted" -gt 0 ] || verdict=FAIL
  elif [ "$counted" != "$expected" ]; then verdict=FAIL; fi
  [ $verdict = ok ] || { failures=$((failures + 1)); echo "--- $name ($mode) failed: rc $rc"; cat "$dir/out.txt" "$dir/err.txt" | tail -20; }
  echo "--- $name ($mode): $check"; cat "$dir"/report-*.txt 2>/dev/null
  table+=("$(printf '| %-34s | %-7s | %-4s | %-7s | %-10s | %-8s | %s |' "$name" "$mode" "$([[ "$check" == PASS* ]] && echo pass || echo FAIL)" "$memory" "$counted" "$expected" "$verdict")")
}

for mode in $modes; do
  run_case "cuda nvcc default (static)" 10 "$mode" -- "$build/alloc_kernel_static" 10
  run_case "cuda -cudart shared" 10 "$mode" -- "$build/alloc_kernel_shared" 10
  run_case "cudaDeviceReset mid-program" 7 "$mode" -- "$build/device_reset"
  run_case "cuCtxDestroy, then a new context" 7 "$mode" -- "$build/context_destroy"
  run_case "pointer attributes, reused block" 3 "$mode" GPUSHIM_POOL_REUSE=immediate -- "$build/pointer_attributes"
  run_case "graph capture, blocking stream" 28 "$mode" -- "$build/graph_capture" blocking
  run_case "graph capture, non-blocking stream" 28 "$mode" -- "$build/graph_capture" nonblocking
  run_case "pytorch caching allocator" any "$mode" -- python3 tests/gpu/check_torch.py
  run_case "pytorch NO_CUDA_MEMORY_CACHING=1" any "$mode" PYTORCH_NO_CUDA_MEMORY_CACHING=1 -- python3 tests/gpu/check_torch.py
  run_case "cupy MemoryPool" any "$mode" -- python3 tests/gpu/check_cupy.py
  run_case "cupy set_allocator(None)" any "$mode" -- python3 tests/gpu/check_cupy.py none
  # In managed mode the shim itself sets TF_FORCE_UNIFIED_MEMORY=1 (XLA's arena then comes from
  # cuMemAllocManaged) and XLA_PYTHON_CLIENT_PREALLOCATE=false; nothing JAX-specific here.
  run_case "jax" any "$mode" XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 -- python3 tests/gpu/check_jax.py
done

echo "--- reuse safety: a kernel still reads A while A is freed, re-allocated and overwritten"
echo "no shim:        $("$build/reuse_safety")"
for reuse in safe immediate; do
  echo "pool $reuse: $(LD_PRELOAD="$shim" GPUSHIM_MODE=pool GPUSHIM_POOL_REUSE=$reuse GPUSHIM_REPORT=off "$build/reuse_safety")"
done
echo "--- the same with 400 ms of allocations after the free (the pool's events decide), with"
echo "    blocking streams, non-blocking ones, and the reader's stream destroyed before the free"
for kind in blocking nonblocking destroyed; do
  echo "no shim:    $("$build/reuse_safety" $kind)"
  for reuse in safe immediate; do
    echo "pool $reuse: $(LD_PRELOAD="$shim" GPUSHIM_MODE=pool GPUSHIM_POOL_REUSE=$reuse GPUSHIM_REPORT="$work/rs-$kind-$reuse.txt" "$build/reuse_safety" $kind)"
    grep -E "synchronizations made|reuse by events" "$work/rs-$kind-$reuse.txt"
  done
done
echo "--- after an idle spell (the shim reuses frees at once while no work is in flight): a"
echo "    framework's kernel reads x for ~100 ms from a side stream while x is freed and overwritten"
for fw in torch cupy; do
  echo "no shim:        $(PYTORCH_NO_CUDA_MEMORY_CACHING=1 python3 tests/gpu/check_idle_reuse.py $fw 2>&1 | tail -1)"
  for reuse in safe immediate; do
    echo "pool $reuse: $(PYTORCH_NO_CUDA_MEMORY_CACHING=1 LD_PRELOAD="$shim" GPUSHIM_MODE=pool GPUSHIM_POOL_REUSE=$reuse GPUSHIM_REPORT="$work/idle-$fw-$reuse-%p.txt" python3 tests/gpu/check_idle_reuse.py $fw 2>&1 | tail -1)"
    grep -h "in flight" "$work"/idle-$fw-$reuse-*.txt 2>/dev/null
  done
done
echo "--- one pool per device, and peers reading each other's blocks (needs two GPUs)"
for variant in off pool pool-chunks; do
  mode=${variant%-chunks}; expandable=auto; [ "$variant" = pool-chunks ] && expandable=off
  line=$(LD_PRELOAD="$shim" GPUSHIM_MODE=$mode GPUSHIM_POOL_REUSE=immediate GPUSHIM_POOL_EXPANDABLE=$expandable GPUSHIM_REPORT="$work/two-$variant-%p.txt" "$build/two_devices" 2>&1 | tail -1)
  echo "$variant: $line"
  [[ "$line" == PASS* || "$line" == SKIP* ]] || failures=$((failures + 1))
  cat "$work"/two-$variant-*.txt 2>/dev/null | grep -E "device [0-9]: [0-9]+ allocations|pool reserved|growth in place"
done
echo "--- PyTorch DistributedDataParallel over NCCL, 2 ranks (needs two GPUs; torchrun)"
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  for variant in off pool pool-nocaching; do
    mode=${variant%-nocaching}; extra=()
    [ "$variant" = pool-nocaching ] && extra=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    line=$(env "${extra[@]}" LD_PRELOAD="$shim" GPUSHIM_MODE=$mode GPUSHIM_REPORT="$work/ddp-$variant-%p.txt" \
      timeout 300 torchrun --nproc_per_node=2 --master_port=29511 tests/gpu/check_ddp.py 2>&1 | grep -E "^(PASS|FAIL) ddp" | head -1)
    echo "$variant: ${line:-FAIL ddp: no result}"
    [[ "$line" == PASS* ]] || failures=$((failures + 1))
    cat "$work"/ddp-$variant-*.txt 2>/dev/null | grep -E "device [0-9]: [0-9]+ allocations|growth in place" | sort | uniq -c
  done
else
  echo "SKIP ddp: one device"
fi
echo "--- invisible where unused: bash under the shim prints [$(LD_PRELOAD="$shim" GPUSHIM_MODE=pool bash -c 'echo hi' 2>&1)]"
echo "--- libraries the shim links: $(readelf -d "$shim" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/--- card: /'

echo
echo "| program                            | mode    | check| memory  | counted    | expected | verdict |"
echo "|------------------------------------|---------|------|---------|------------|----------|---------|"
printf '%s\n' "${table[@]}"
echo "gpu-check: $failures failed"
exit $((failures > 0))
