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
echo "--- trace cost on the pool pair benchmark (immediate reuse; ns per pair: median of 20-pair"
echo "    batches, and the mean over all pairs; the trace written to a file on local disk)"
shim=$PWD/$build/src/libgpushim.so
rm -f "$trace"
for round in 1 2; do
  plain=$(LD_PRELOAD=$shim GPUSHIM_MODE=pool GPUSHIM_POOL_REUSE=immediate GPUSHIM_REPORT=off "$build/bench_alloc" sizes malloc)
  traced=$(LD_PRELOAD=$shim GPUSHIM_MODE=pool GPUSHIM_POOL_REUSE=immediate GPUSHIM_REPORT=off GPUSHIM_TRACE=/tmp/gpushim-bench-trace.csv "$build/bench_alloc" sizes malloc)
  echo "round $round: $(wc -l </tmp/gpushim-bench-trace.csv) trace lines"
  echo "| size | no trace: median | trace: median | ratio | no trace: mean | trace: mean | ratio |"
  echo "|---|---|---|---|---|---|---|"
  paste <(sed -n 's/^RESULT sizes //p' <<<"$plain") <(sed -n 's/^RESULT sizes //p' <<<"$traced") |
    awk '{printf "| %s | %s | %s | %.2fx | %s | %s | %.2fx |\n", $1, $2, $5, $5 / $2, $3, $6, $6 / $3}'
  rm -f /tmp/gpushim-bench-trace.csv
done
nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^/card: /'
