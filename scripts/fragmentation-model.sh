#!/usr/bin/env bash
# The random pattern of the fragmentation target (1000 live blocks, log-uniform 256 B..4 MiB,
# random free order) on the test driver, over many seeds: peak reserved / peak requested, mean
# and spread, for both reuse policies. No GPU needed. Usage: fragmentation-model.sh [seeds] [build]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-40}
build=${2:-build-test}
[ -x "$build/tests/unit/test_pool" ] || { meson setup "$build" >/dev/null && meson compile -C "$build" >/dev/null; }
for seed in $(seq 1 "$seeds"); do
  GS_RANDOM_SEED=$seed "$build/tests/unit/test_pool" 2>&1 | grep "random pattern"
done | awk '{ n[$3]++; sum[$3] += $NF; sq[$3] += $NF * $NF; if ($NF > max[$3]) max[$3] = $NF
              if (min[$3] == "" || $NF < min[$3]) min[$3] = $NF }
  END { for (k in n) { m = sum[k] / n[k]
          printf "%s reuse: %d seeds, peak reserved / peak requested mean %.3f (+- %.3f), %.3f..%.3f\n",
                 k, n[k], m, sqrt(sq[k] / n[k] - m * m) / sqrt(n[k]), min[k], max[k] } }'
