#!/usr/bin/env bash
# P3: cache hit. The same POST /api/generate repeated against the hub with the memory cache on (after one miss
# warms it) vs nginx serving the same 4096 bytes as a static file (sendfile on, open_file_cache; the same POST,
# turned into a 200 with `error_page 405 =200 $uri`). Both pinned to CPU 0, wrk -t1 on CPU 1; A/B rounds; RPS,
# p99, CPU µs/request of the hub process / the nginx worker. The upstream (nginx, CPU 1) answers only the warm-up.
source "$(dirname "$0")/lib.sh"
source "$ROOT/bench/proxy_lib.sh"
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-5}; CONNS=${CONNS:-64}
ensure_bin
uport=$(free_port); hport=$(free_port); nport=$(free_port)
mp3=$(mp3_4k)
mkdir -p "$WORK/www/v1/audio" "$WORK/www/api"
cp "$mp3" "$WORK/www/v1/audio/speech"; cp "$mp3" "$WORK/www/api/generate"

nginx_start upstream 1 "server { listen 127.0.0.1:$uport; root $WORK/www; sendfile on; access_log $WORK/up-access.log;
    location = /v1/audio/speech { default_type audio/mpeg; error_page 405 =200 \$uri; } }"
nginx_start static 0 "open_file_cache max=100 inactive=60s; open_file_cache_valid 60s;
  server { listen 127.0.0.1:$nport backlog=4096; root $WORK/www; sendfile on; tcp_nopush on;
    location = /api/generate { default_type audio/mpeg; error_page 405 =200 \$uri; } }"
cat >"$WORK/hub.yaml" <<YAML
providers:
  - name: up
    type: openai
    base_url: "http://127.0.0.1:$uport"
    api_key_env: BENCH_KEY
    timeout: 30s
    concurrency: 256
    queue: 10000
rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }
cache: { enabled: true, backend: memory, max_bytes: 64MiB, ttl: 1h }
YAML
hub_start hub "$WORK/hub.yaml" "$hport"
hpid=${HUB_PID[hub]}; nw=${NGINX_WORKER[static]}

body='input=Hello+from+the+ttshub+benchmark.&voice=alloy&response_format=mp3'   # = wrk_form.lua's default body
xc=""
for i in 1 2; do   # first a miss, then it must be a hit with the same bytes
  xc=$(curl -s -D - -o "$WORK/check.mp3" -d "$body" "http://127.0.0.1:$hport/api/generate" | tr -d '\r' |
       awk -F': ' 'tolower($1)=="x-cache" {print $2}')
  cmp -s "$WORK/check.mp3" "$mp3" || { echo "bench: the hub answered other bytes" >&2; exit 1; }
done
curl -s -o "$WORK/check2.mp3" -d "$body" "http://127.0.0.1:$nport/api/generate"
cmp -s "$WORK/check2.mp3" "$mp3" || { echo "bench: nginx answered other bytes" >&2; exit 1; }
[ "$xc" = HIT ] || echo "bench: WARNING: the second identical request was X-Cache: '$xc', not HIT" >&2

for _ in $(seq 1 "$ROUNDS"); do
  wrk_run hub "http://127.0.0.1:$hport/api/generate" "$hpid" "$CONNS" "$DUR"
  wrk_run nginx "http://127.0.0.1:$nport/api/generate" "$nw" "$CONNS" "$DUR"
done
xc2=$(curl -s -D - -o /dev/null -d "$body" "http://127.0.0.1:$hport/api/generate" | tr -d '\r' |
      awk -F': ' 'tolower($1)=="x-cache" {print $2}')

upcalls=$(grep -c "POST /v1/audio/speech" "$WORK/up-access.log" 2>/dev/null || echo "?")
{
  echo "P3 cache hit: the same POST /api/generate (4096-byte MP3), wrk -t1 c$CONNS, ${DUR}s x $ROUNDS rounds, medians"
  echo "   hub: memory cache (X-Cache after warm-up: $xc, after the runs: $xc2;
   requests that reached the upstream in total: $upcalls); nginx: static file, sendfile on,"
  echo "   open_file_cache; both pinned to CPU 0, wrk on CPU 1"
  printf "%-14s %10s %10s %12s %8s\n" "" RPS "p99 ms" "CPU us/req" non2xx
  for s in hub nginx; do
    printf "%-14s %10.0f %10.3f %12.2f %8d\n" "$s" "$(med 2 $s)" "$(med 3 $s)" "$(med 4 $s)" "$(sum_col 5 $s)"
  done
  awk -v hr="$(med 2 hub)" -v nr="$(med 2 nginx)" -v hu="$(med 4 hub)" -v nu="$(med 4 nginx)" 'BEGIN {
    printf "ratio hub/nginx: RPS %.2fx (target >= 0.9), CPU per request %.2fx\n", hr/nr, hu/nu }'
} | tee "$OUT/p3_cache.txt"
