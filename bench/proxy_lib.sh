# Helpers for the proxy benchmarks (p1, p3, p4, p6, policy_cost); sourced after lib.sh.
# Every process started here is recorded in PIDS and killed by PID in bench_cleanup (installed as the EXIT trap).
PIDS=()
WORK=$(mktemp -d /tmp/ttshub-bench.XXXXXX); chmod 755 "$WORK"  # nginx workers run as nobody
bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [ -n "${BENCH_KEEP:-}" ] && echo "bench: kept $WORK" >&2 || rm -rf "$WORK"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# A 4096-byte MP3: 1 s of sine, 24 kHz mono 32 kb/s (4461 bytes as encoded), cut to 4096 bytes (the last frame is
# truncated). Prints its path.
mp3_4k() {
  local f="$WORK/sine.mp3"
  [ -s "$WORK/sine4k.mp3" ] || {
    ffmpeg -loglevel error -y -f lavfi -i sine=d=1 -ar 24000 -ac 1 -b:a 32k "$f"
    head -c 4096 "$f" >"$WORK/sine4k.mp3"
  }
  echo "$WORK/sine4k.mp3"
}

# nginx_start NAME CPU SERVER_BLOCK: one worker, pinned; sets NGINX_WORKER[NAME] to the worker's pid.
declare -A NGINX_WORKER
nginx_start() {
  local name=$1 cpu=$2 server=$3 d="$WORK/nginx-$1" pid w
  mkdir -p "$d/tmp"
  cat >"$d/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log;
worker_rlimit_nofile 20000;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $d/tmp; proxy_temp_path $d/tmp; fastcgi_temp_path $d/tmp;
  uwsgi_temp_path $d/tmp; scgi_temp_path $d/tmp;
  keepalive_requests 1000000;
  $server
}
NGX
  taskset -c "$cpu" nginx -c "$d/nginx.conf" -p "$d" &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 100); do w=$(pgrep -P "$pid" | head -1 || true); [ -n "$w" ] && break; sleep 0.05; done
  NGINX_WORKER[$name]=${w:-$pid}
}

# hub_start NAME CONFIG_FILE PORT [CPU]: sets HUB_PID[NAME]. The hub gets BENCH_KEY in its environment and its
# own data_dir under $WORK (unless the config sets one), so nothing is written into the tree.
declare -A HUB_PID
hub_start() {
  local cpu=${4:-0}
  grep -q '^data_dir:' "$2" || sed -i "1i data_dir: \"$WORK/data-$1\"" "$2"
  BENCH_KEY=bench-upstream-key taskset -c "$cpu" "$BIN" serve -c "$2" --listen "127.0.0.1:$3" --log-level warn \
    >"$WORK/hub-$1.log" 2>&1 &
  HUB_PID[$1]=$!
  PIDS+=("$!")
  wait_http "http://127.0.0.1:$3/health" || { cat "$WORK/hub-$1.log" >&2; return 1; }
}

# wrk latency value ("850.00us", "1.20ms", "2.00s") -> milliseconds
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /m$/) {sub(/m$/,"",v); v*=60000} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f\n", v}'; }

# wrk_run LABEL URL PID CONNS DUR: one wrk run (POST form body from wrk_form.lua, pinned to CPU 1).
# Appends "LABEL rps p99_ms cpu_us_per_req non2xx requests" to $WORK/results.
# wrk_form.lua (or the script WRK_SCRIPT names) reads WRK_INPUT, WRK_UNIQUE, WRK_AUTH from the environment.
wrk_run() {
  local label=$1 url=$2 pid=$3 conns=$4 dur=$5 t0 t1 out rps p99 reqs bad us
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${dur}s" --timeout 10s --latency -s "${WRK_SCRIPT:-$ROOT/bench/wrk_form.lua}" "$url")
  t1=$(cpu_ticks "$pid")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); bad=${bad:-0}
  local errs; errs=$(awk '/Socket errors/ {print}' <<<"$out")
  [ -n "$errs" ] && echo "  ($label: $errs)" >&2
  us=$(awk -v d=$((t1 - t0)) -v n="$reqs" -v hz="$(clk_tck)" 'BEGIN {printf "%.2f", (n > 0 ? d / hz * 1e6 / n : 0)}')
  echo "$label $rps $p99 $us $bad $reqs" >>"$WORK/results"
}

# med COLUMN LABEL: median of a column of $WORK/results for LABEL
med() { awk -v s="$2" -v c="$1" '$1==s {print $c}' "$WORK/results" | median; }
sum_col() { awk -v s="$2" -v c="$1" '$1==s {t+=$c} END {print t+0}' "$WORK/results"; }

# ensure the hub binary exists (build if needed; the tree may be mid-edit, so retry a few times)
ensure_bin() {
  [ -x "$BIN" ] && return 0
  for _ in 1 2 3; do cmake --build "$ROOT/build" -j2 >/dev/null 2>&1 && [ -x "$BIN" ] && return 0; sleep 10; done
  echo "bench: $BIN missing and the build fails" >&2; return 1
}
