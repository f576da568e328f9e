#!/usr/bin/env bash
# Runs every benchmark; each prints its own table and ratios (see BENCH.md).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for b in http_fixed.sh p1_proxy.sh p2_seed2.sh p3_cache.sh p4_parked.sh p5_espeak.sh p6_longtext.sh p7_transcode.sh policy_cost.sh reload.sh; do
  [ -x "$here/$b" ] || { echo "bench: $b missing"; continue; }
  echo "=== $b"
  bash "$here/$b" || echo "bench: $b failed"
  echo
done
