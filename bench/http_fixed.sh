#!/usr/bin/env bash
# HTTP layer throughput: ttshub serving its embedded page (GET /) vs nginx `return 200` with the same
# bytes. Both pinned to CPU 0, wrk pinned to CPU 1, A/B rounds, medians of RPS, p99 and CPU µs/request.
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-5}; CONNS=${CONNS:-64}
work=$(mktemp -d)
body="$ROOT/web/index.html"
hport=$(free_port); nport=$(free_port)

taskset -c 0 "$BIN" serve --listen "127.0.0.1:$hport" --log-level warn >"$work/hub.log" 2>&1 &
hpid=$!
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$nport;
    location / { default_type "text/html; charset=utf-8"; return 200 '$(cat "$body")'; }
  }
}
NGX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" &
npid=$!
trap 'kill $hpid $npid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
wait_http "http://127.0.0.1:$hport/"; wait_http "http://127.0.0.1:$nport/"
nginx_worker=$(pgrep -P "$npid" | head -1); nginx_worker=${nginx_worker:-$npid}

run() { # name port pid
  local t0 t1 out rps p99 reqs
  t0=$(cpu_ticks "$3")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:$2/")
  t1=$(cpu_ticks "$3")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  local us; us=$(awk -v d=$((t1 - t0)) -v n="$reqs" -v hz="$(clk_tck)" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
  echo "$1 $rps $p99 $us" >>"$work/results"
}
for _ in $(seq 1 "$ROUNDS"); do run ttshub "$hport" "$hpid"; run nginx "$nport" "$nginx_worker"; done
echo "HTTP fixed response (GET /, $(wc -c <"$body") bytes, c$CONNS, ${DUR}s x $ROUNDS rounds, pinned)"
printf "%-8s %12s %10s %14s\n" server "RPS(median)" "p99" "CPU us/req"
for s in ttshub nginx; do
  rps=$(awk -v s=$s '$1==s {print $2}' "$work/results" | median)
  p99=$(awk -v s=$s '$1==s {print $3}' "$work/results" | sort | sed -n "$(( (ROUNDS + 1) / 2 ))p")
  us=$(awk -v s=$s '$1==s {print $4}' "$work/results" | median)
  printf "%-8s %12.0f %10s %14s\n" $s "$rps" "$p99" "$us"
  echo "$s $rps $us" >>"$work/med"
done
awk '{r[$1]=$2; u[$1]=$3} END {printf "ratio ttshub/nginx: RPS %.2fx, CPU per request %.2fx\n", r["ttshub"]/r["nginx"], u["ttshub"]/u["nginx"]}' "$work/med" | tee "$OUT/http_fixed.txt"
