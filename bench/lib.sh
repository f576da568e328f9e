# Shared helpers for the bench scripts (sourced).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${TTSHUB_BIN:-$ROOT/build/ttshub}
OUT=${BENCH_OUT:-$ROOT/bench/out}
mkdir -p "$OUT"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

wait_http() { # url
  for _ in $(seq 1 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "bench: $1 did not come up" >&2; return 1
}

# CPU ticks (utime+stime) of a pid
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
clk_tck() { getconf CLK_TCK; }

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "nan"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
