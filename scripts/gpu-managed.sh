#!/usr/bin/env bash
# Managed memory at pool speed, spilling, the device budget and the pinned host pool, on one
# card, side by side in one run (part of gpu-bench.sh; runs alone too):
#   1. bench/bench_singlecell.py (sparse counts, normalize, log1p, HVG, scale, PCA, batched kNN
#      with a ~0.5 GB distance matrix per batch) under CuPy's MemoryPool, cudaMallocAsync, raw
#      cudaMalloc, and raw under the shim: pool, managed, pool + spill at a third of the peak,
#      managed with GPUSHIM_DEVICE_LIMIT at half the peak. Seconds per run (medians), ratios to
#      the shim's pool, and the results' checksums, which must be equal everywhere.
#   2. cudaMallocHost+cudaFreeHost pairs without the shim and from the shim's host pool.
#   3. GPUSHIM_DEVICE_LIMIT on the card: advice past the budget (managed), refusals (off, pool).
#   4. pinned blocks reused safely, attributes of a reused mapped block.
# Every managed-mode run sets GPUSHIM_MANAGED_LIMIT: oversubscribing a shared GPU can stall it.
# Knobs (not GPUSHIM_*): GPU_BUILD, SC_RUNS (timed runs per setup, default 5), SKIP_BUILD.
set -u
cd "$(dirname "$0")/.."
build=${GPU_BUILD:-build-gpu}
[ -n "${SKIP_BUILD:-}" ] || bash scripts/gpu-build.sh || exit 1
shim=$PWD/$build/src/libgpushim.so
work=$(mktemp -d)
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
runs=${SC_RUNS:-5}
failures=0
export GPUSHIM_MANAGED_LIMIT=25%

# sc NAME ALLOCATOR [VAR=VALUE ...]: one process of the pipeline, its report in JSON beside it.
sc() {
  local name=$1 allocator=$2; shift 2
  env "$@" GPUSHIM_REPORT="$work/sc-$name-report.json" GPUSHIM_REPORT_FORMAT=json \
    PYTHONUNBUFFERED=1 timeout 300 python3 bench/bench_singlecell.py "$allocator" "$runs" \
    >"$work/sc-$name.txt" 2>&1
  echo "--- $name: $(grep RESULT "$work/sc-$name.txt" || tail -3 "$work/sc-$name.txt")"
}
json() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null; }

sc cupy-pool pool
sc cupy-async async
sc raw raw
sc pool raw LD_PRELOAD="$shim" GPUSHIM_MODE=pool
peak=$(json "$work/sc-pool-report.json" 'r["devices"][0]["in_use_peak"]')
peak=${peak:-4294967296}
echo "peak in use under the pool: $peak bytes"
sc managed raw LD_PRELOAD="$shim" GPUSHIM_MODE=managed
sc spill raw LD_PRELOAD="$shim" GPUSHIM_MODE=pool GPUSHIM_ON_OOM=managed GPUSHIM_POOL_MAX=$((peak / 3))
sc managed-half raw LD_PRELOAD="$shim" GPUSHIM_MODE=managed GPUSHIM_DEVICE_LIMIT=$((peak / 2))
for name in pool managed spill managed-half; do
  echo "--- report ($name):"
  json "$work/sc-$name-report.json" 'json.dumps({k: v for k, v in r["devices"][0].items() if k in ("allocations", "frees", "failed", "in_use_peak", "pool", "managed", "device_limit")})'
done

echo "--- pinned host memory pairs"
"$build/bench_alloc" host malloc >"$work/host-none.txt"
LD_PRELOAD="$shim" GPUSHIM_MODE=pool GPUSHIM_REPORT="$work/host-report.txt" \
  "$build/bench_alloc" host malloc >"$work/host-pool.txt"
cat "$work/host-none.txt" "$work/host-pool.txt" "$work/host-report.txt"

echo "--- the device budget on the card (GPUSHIM_DEVICE_LIMIT=1G)"
for mode in managed off pool; do
  kind=device; [ "$mode" = managed ] && kind=managed
  line=$(LD_PRELOAD="$shim" GPUSHIM_MODE=$mode GPUSHIM_DEVICE_LIMIT=1G \
    GPUSHIM_REPORT="$work/limit-$mode.txt" "$build/device_limit" $kind 2>&1 | tail -1)
  echo "$mode: $line"
  [[ "$line" == PASS* ]] || failures=$((failures + 1))
  grep -h "device limit\|managed memory:" "$work/limit-$mode.txt"
done
echo "--- pinned blocks: attributes after reuse, and a queued copy from a freed block"
echo "no shim:"; "$build/host_pool" || failures=$((failures + 1))
echo "shim (pool mode, host pool on):"
LD_PRELOAD="$shim" GPUSHIM_MODE=pool GPUSHIM_REPORT="$work/host-check.txt" "$build/host_pool" ||
  failures=$((failures + 1))
grep -h "pinned" "$work/host-check.txt"

[ -n "${OUT:-}" ] && cp -r "$work" "$OUT/managed-raw" 2>/dev/null

echo
echo "## CuPy single-cell pipeline with per-batch temporaries: seconds per run (median of $runs), $card"
base=$(sed -n 's/^RESULT singlecell \([0-9.]*\).*/\1/p' "$work/sc-pool.txt")
check0=$(sed -n 's/.*CHECK \(.*\)/\1/p' "$work/sc-cupy-pool.txt")
echo "| setup | s/run | vs shim pool | all runs | results |"
echo "|---|---|---|---|---|"
for name in cupy-pool cupy-async raw pool managed spill managed-half; do
  s=$(sed -n 's/^RESULT singlecell \([0-9.]*\).*/\1/p' "$work/sc-$name.txt")
  all=$(sed -n 's/^RESULT singlecell [0-9.]* runs \(.*\) CHECK.*/\1/p' "$work/sc-$name.txt")
  check=$(sed -n 's/.*CHECK \(.*\)/\1/p' "$work/sc-$name.txt")
  same=equal; [ -n "$check" ] && [ "$check" = "$check0" ] || { same="DIFFERENT ($check)"; failures=$((failures + 1)); }
  echo "| $name | ${s:-FAIL} | $(awk -v x="$s" -v y="$base" 'BEGIN {if (x > 0 && y > 0) printf "%.2fx", x / y}') | $all | $same |"
done
echo "(cupy-pool: CuPy's MemoryPool; cupy-async: cudaMallocAsync; raw: set_allocator(None), no shim;"
echo " pool, managed: raw under the shim; spill: pool with GPUSHIM_POOL_MAX=$((peak / 3)) (a third of"
echo " the peak, $peak bytes) and GPUSHIM_ON_OOM=managed; managed-half: managed with"
echo " GPUSHIM_DEVICE_LIMIT=$((peak / 2)). Managed runs: GPUSHIM_MANAGED_LIMIT=25%. Results: the"
echo " checksums (PCA variance, kNN indices) against cupy-pool's: $check0)"
echo
echo "## pinned host memory: ns per cudaMallocHost+cudaFreeHost pair (median), $card"
echo "| size | no shim | shim host pool | ratio |"
echo "|---|---|---|---|"
for size in 4096 1048576 67108864; do
  a=$(awk -v s=$size '$2 == "host" && $3 == s {print $4}' "$work/host-none.txt")
  b=$(awk -v s=$size '$2 == "host" && $3 == s {print $4}' "$work/host-pool.txt")
  echo "| $size | $a | $b | $(awk -v x="$a" -v y="$b" 'BEGIN {if (y > 0) printf "%.0fx", x / y}') |"
done
echo "gpu-managed: $failures failed"
exit $((failures > 0))
