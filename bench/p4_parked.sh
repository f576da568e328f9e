#!/usr/bin/env bash
# P4: N (10,000) concurrent POST /api/generate parked on an upstream that answers after 2 s.
# - Upstream: bench/parked_upstream.py (asyncio, one port, backlog 65535) sleeps $DELAY s, then answers 200 with
#   a 4096-byte MP3 and Content-Length. It reports the peak number of requests it held at once.
# - Hub (pinned to CPU 0): one openai provider with concurrency $N and queue $N, no limits, cache off.
# - Client: bench/parked_client.py first opens N connections (<= 256 connects in progress at once), then writes
#   one request on every one of them at once (Connection: close); wall time counts from that barrier.
# Reports: how many completed with 200, the hub's peak RSS (VmHWM), the upstream's peak in-flight, wall time.
# ulimit -n is raised to the hard limit in this script; the hub needs ~2N descriptors (N in, N to the upstream).
source "$(dirname "$0")/lib.sh"
source "$ROOT/bench/proxy_lib.sh"
N=${N:-10000}; DELAY=${DELAY:-2}; TIMEOUT=${TIMEOUT:-90}
ensure_bin
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
nofile=$(ulimit -n)
hport=$(free_port)
mp3=$(mp3_4k)

/usr/bin/python3 "$ROOT/bench/parked_upstream.py" --port 0 --delay "$DELAY" --body "$mp3" >"$WORK/up.out" 2>&1 &
upid=$!; PIDS+=("$upid")
for _ in $(seq 1 100); do grep -q READY "$WORK/up.out" && break; sleep 0.05; done
uport=$(awk '/READY/ {print $2}' "$WORK/up.out")
[ -n "$uport" ] || { cat "$WORK/up.out" >&2; exit 1; }

cat >"$WORK/hub.yaml" <<YAML
limits: { max_connections: $((N + 1000)), request_timeout: 120s, header_timeout: 60s }
providers:
  - name: up
    type: openai
    base_url: "http://127.0.0.1:$uport"
    api_key_env: BENCH_KEY
    timeout: 60s
    concurrency: $N
    queue: $N
rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }
cache: { enabled: false }
YAML
hub_start hub "$WORK/hub.yaml" "$hport"
hpid=${HUB_PID[hub]}
rss0=$(awk '/VmRSS/ {print $2}' "/proc/$hpid/status")

# sample the hub's RSS and open descriptors while the client runs
( while kill -0 "$hpid" 2>/dev/null; do
    echo "$(awk '/VmRSS/ {print $2}' /proc/$hpid/status 2>/dev/null) $(ls /proc/$hpid/fd 2>/dev/null | wc -l)"
    sleep 0.2; done >"$WORK/samples" ) &
PIDS+=("$!")
t0=$(cpu_ticks "$hpid")
res=$(timeout $((TIMEOUT + 30)) /usr/bin/python3 "$ROOT/bench/parked_client.py" --port "$hport" --n "$N" \
      --timeout "$TIMEOUT")
t1=$(cpu_ticks "$hpid")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$hpid/status")
maxfd=$(awk '{print $2}' "$WORK/samples" | sort -n | tail -1)
kill "$upid"; for _ in $(seq 1 100); do grep -q STATS "$WORK/up.out" && break; sleep 0.05; done
ustats=$(sed -n 's/^STATS //p' "$WORK/up.out"); [ -n "$ustats" ] || ustats='{"max_inflight": "?"}'
errs=$(grep -c '"level":"error"' "$WORK/hub-hub.log" || true)

{
  echo "P4 parked: $N concurrent POST /api/generate, upstream answers after ${DELAY}s (hub pinned to CPU 0, ulimit -n $nofile)"
  echo "client:   $res"
  echo "upstream: $ustats"
  ok=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$res")
  wall=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["wall_s"])' "$res")
  upmax=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["max_inflight"])' "$ustats")
  printf "completed with 200: %d of %d (target: all); peak requests held by the upstream at once: %s\n" "$ok" "$N" "$upmax"
  printf "hub peak RSS (VmHWM): %.1f MiB (at start %.1f MiB; target < 150 MB); peak open fds %s\n" \
    "$(echo "$hwm/1024" | bc -l)" "$(echo "$rss0/1024" | bc -l)" "$maxfd"
  printf "wall time: %.2f s for a %.0f s upstream; hub CPU %.2f s (%.0f us/request); hub error log lines: %s\n" \
    "$wall" "$DELAY" "$(echo "($t1-$t0)/$(clk_tck)" | bc -l)" "$(echo "($t1-$t0)/$(clk_tck)*1000000/$N" | bc -l)" "$errs"
} | tee "$OUT/p4_parked.txt"
