#!/usr/bin/env bash
# Observability on a GPU: `gpushim run` records a PyTorch training loop (caching off, so every
# tensor is a cudaMalloc) with a JSON report and a trace; `gpushim report`, `replay` (each mode)
# and `plot` read them; and the trace's cost on the pool pair benchmark, side by side.
set -u
cd "$(dirname "$0")/.."
build=${GPUSHIM_BUILD:-build-gpu}
bash scripts/gpu-build.sh || exit 1
cli=$PWD/$build/src/gpushim
out=${OUT:-$(mktemp -d)}
rm -f "$out"/torch-*.json "$out"/torch-*.csv
echo "--- gpushim run (PyTorch MLP, PYTORCH_NO_CUDA_MEMORY_CACHING=1, pool)"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cli" run --mode pool --format json \
  --report "$out/torch-%p.json" --trace "$out/torch-%p.csv" -- python3 bench/bench_torch.py mlp
trace=$(ls "$out"/torch-*.csv | head -1)
echo "--- trace: $(wc -l <"$trace") lines; head:"; head -3 "$trace"
echo "--- gpushim report"; "$cli" report "$out"/torch-*.json
echo "--- gpushim replay"; GPUSHIM_MANAGED_LIMIT=25% "$cli" replay "$trace" --mode off --mode pool --mode managed
echo "--- gpushim plot"; "$cli" plot "$trace" -o "$out/torch-trace.svg"
echo "--- trace cost on the pool pair benchmark (immediate reuse; ns per pair, median of 20-pair"
echo "    batches; the trace written to a file on local disk). The host's speed changes by up to"
echo "    1.7x from minute to minute (the same code gave 105 and 180 ns): so 8 rounds, alternating,"
echo "    and medians over rounds; compare rounds where both runs are at the same speed"
shim=$PWD/$build/src/libgpushim.so
rm -f "$trace"
rounds=${TRACE_ROUNDS:-8} # not GPUSHIM_*: the shim refuses variables it does not know
for round in $(seq 1 "$rounds"); do
  # The floor (bench/floor.c, an empty allocator) tells the host's speed in this round.
  LD_PRELOAD=$PWD/$build/libfloor.so "$build/bench_alloc" sizes malloc | sed -n "s/^RESULT sizes /f /p"
  for traced in 0 1; do
    file=; [ "$traced" = 1 ] && file=/tmp/gpushim-bench-trace.csv
    LD_PRELOAD=$shim GPUSHIM_MODE=pool GPUSHIM_POOL_REUSE=immediate GPUSHIM_REPORT=off \
      GPUSHIM_TRACE=$file "$build/bench_alloc" sizes malloc |
      sed -n "s/^RESULT sizes /$traced /p"
    rm -f /tmp/gpushim-bench-trace.csv
  done
done | awk '
  $1 == "f" { floor = floor " " $3; next }
  !($2 in size) { size[$2] = 1; order[++sizes] = $2 }
  { v[$1, $2, ++n[$1, $2]] = $3; line[$1] = line[$1] " " $3 }
  $2 == 268435456 && $1 == 0 { print "round " ++r " floor: " floor; floor = "" }
  $2 == 268435456 { print "round " r (($1) ? " traced:" : " plain: ") line[$1]; line[$1] = "" }
  function median(t, s,   i, j, k, a, m) {
    m = n[t, s]; for (i = 1; i <= m; i++) a[i] = v[t, s, i]
    for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { k = a[j]; a[j] = a[j - 1]; a[j - 1] = k }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
  END {
    print "| size | no trace | trace | ratio of medians | median of the ratios per round |"
    print "|---|---|---|---|---|"
    for (i = 1; i <= sizes; i++) {
      s = order[i]
      for (k = 1; k <= n[1, s]; k++) { v[2, s, k] = v[1, s, k] / v[0, s, k]; n[2, s] = k }
      printf "| %s | %.1f | %.1f | %.3fx | %.3fx |\n", s, median(0, s), median(1, s),
        median(1, s) / median(0, s), median(2, s) } }'
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^/card: /'
