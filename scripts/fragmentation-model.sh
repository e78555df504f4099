#!/usr/bin/env bash
# The random pattern of the fragmentation target (1000 live blocks, log-uniform 256 B..4 MiB,
# random free order) on the test driver, over many seeds: peak reserved / peak requested, mean
# and spread, for both reuse policies, with the large heap growing in place (expandable, as on a
# GPU with virtual memory management) and in chunks. No GPU needed.
# Usage: fragmentation-model.sh [seeds] [build directory]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-40}
build=${2:-build-test}
[ -x "$build/tests/unit/test_pool" ] || { meson setup "$build" >/dev/null && meson compile -C "$build" >/dev/null; }
for seed in $(seq 1 "$seeds"); do
  { GS_RANDOM_SEED=$seed "$build/tests/unit/test_pool" 2>&1 || true; } | grep "^random pattern"
done | awk '{ k = $3 " reuse, " $5; k = substr(k, 1, length(k) - 1)
              n[k]++; sum[k] += $NF; sq[k] += $NF * $NF; if ($NF > max[k]) max[k] = $NF
              if (min[k] == "" || $NF < min[k]) min[k] = $NF }
  END { for (k in n) { m = sum[k] / n[k]
          printf "%s: %d seeds, peak reserved / peak requested mean %.3f (+- %.3f), %.3f..%.3f\n",
                 k, n[k], m, sqrt(sq[k] / n[k] - m * m) / sqrt(n[k]), min[k], max[k] } }' | sort
