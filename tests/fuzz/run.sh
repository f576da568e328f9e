#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for a share of SECONDS in all.
# Seeds come from tests/fuzz/corpus/<target>/ when present; new inputs go to a scratch dir.
set -euo pipefail
build=${1:-build-fuzz}
total=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t targets < <(find "$build" -maxdepth 1 -type f -name 'fuzz_*' -perm -u+x | sort)
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: no targets in $build"; exit 1; }
per=$(( total / ${#targets[@]} )); [ "$per" -ge 5 ] || per=5
failed=0; passed=0
for t in "${targets[@]}"; do
  name=$(basename "$t")
  scratch=$(mktemp -d)
  seeds=()
  [ -d "$here/corpus/$name" ] && seeds+=("$here/corpus/$name")
  echo "fuzz: $name for ${per}s"
  if ASAN_OPTIONS=detect_leaks=1 "$t" -max_total_time="$per" -max_len=65536 -rss_limit_mb=2048 \
       -print_final_stats=0 "$scratch" "${seeds[@]}" > "$scratch.log" 2>&1; then
    passed=$((passed + 1))
    grep -E '^#[0-9]+.*DONE' "$scratch.log" | tail -1 || true
  else
    failed=$((failed + 1))
    tail -40 "$scratch.log"
    mkdir -p "$build/crashes"; cp -f crash-* leak-* timeout-* oom-* "$build/crashes/" 2>/dev/null || true
  fi
  rm -rf "$scratch" "$scratch.log"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
