#!/usr/bin/env bash
# Observability on a GPU: `gpushim run` records a PyTorch training loop (caching off, so every
# tensor is a cudaMalloc) with a JSON report and a trace; `gpushim report`, `replay` (each mode)
# and `plot` read them; and the trace's cost on the pool pair benchmark, side by side.
set -u
cd "$(dirname "$0")/.."
build=${GPU_BUILD:-build-gpu}
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
echo "    batches; the trace written to a file on local disk). The shim's pair time changes from"
echo "    one process to the next, and at times within one (README, Limits): so short runs of one"
echo "    size each, alternating floor, untraced and traced, in many rounds; each round's ratio"
echo "    compares runs a second apart, and the median over rounds is the estimate; the core speed"
echo "    (bench/core_speed.h) tells rounds where the core ran slower apart"
shim=$PWD/$build/src/libgpushim.so
rm -f "$trace"
rounds=${TRACE_ROUNDS:-10} # not GPUSHIM_*: the shim refuses variables it does not know
for round in $(seq 1 "$rounds"); do
  for size in 4096 16777216; do
    LD_PRELOAD=$PWD/$build/libfloor.so "$build/bench_alloc" sizes malloc $size |
      sed -n "s/^RESULT sizes /$round floor /p"
    for traced in plain traced; do
      file=; [ "$traced" = traced ] && file=/tmp/gpushim-bench-trace.csv
      LD_PRELOAD=$shim GPUSHIM_MODE=pool GPUSHIM_POOL_REUSE=immediate GPUSHIM_REPORT=off \
        GPUSHIM_TRACE=$file "$build/bench_alloc" sizes malloc $size |
        sed -n "s/^RESULT sizes /$round $traced /p"
      rm -f /tmp/gpushim-bench-trace.csv
    done
  done
done | awk '
  { v[$1, $2, $3] = $4; w[$1, $2, $3] = $6 "/" $7; lat[$1, $2, $3] = $6; thr[$1, $2, $3] = $7; r[$1] = 1; if (!($3 in seen)) { seen[$3] = 1; order[++sizes] = $3 } }
  function near(a, b) { return a > 0 && b > 0 && (a > b ? a / b : b / a) <= 1.1 }
  function median(a, m,   i, j, k) {
    for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { k = a[j]; a[j] = a[j - 1]; a[j - 1] = k }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
  END {
    print "| round | size | floor | no trace | trace | ratio | core speed (latency/throughput probe, ns a step): no trace, trace |"
    print "|---|---|---|---|---|---|---|"
    for (i = 1; i in r; i++) for (z = 1; z <= sizes; z++) { s = order[z]
      printf "| %d | %s | %s | %s | %s | %.3f | %s, %s |\n", i, s, v[i, "floor", s], v[i, "plain", s], v[i, "traced", s],
        v[i, "traced", s] / v[i, "plain", s], w[i, "plain", s], w[i, "traced", s] }
    print ""
    print "| size | rounds | floor (median) | no trace (median) | trace (median) | median of the ratios per round | the same, rounds where both ran at one core speed (both probes within 10%) |"
    print "|---|---|---|---|---|---|---|"
    for (z = 1; z <= sizes; z++) { s = order[z]; m = 0; n = 0
      for (i = 1; i in r; i++) { m++; f[m] = v[i, "floor", s]; p[m] = v[i, "plain", s]; t[m] = v[i, "traced", s]; q[m] = t[m] / p[m]
        if (near(lat[i, "plain", s], lat[i, "traced", s]) && near(thr[i, "plain", s], thr[i, "traced", s])) e[++n] = q[m] }
      printf "| %s | %d | %.1f | %.1f | %.1f | %.3fx | %s (%d rounds) |\n", s, m, median(f, m), median(p, m), median(t, m), median(q, m),
        n ? sprintf("%.3fx", median(e, n)) : "-", n } }'
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^/card: /'
