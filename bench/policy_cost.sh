#!/usr/bin/env bash
# Policy chain cost: P1's setup (POST /api/generate -> openai provider -> upstream nginx serving a 4096-byte MP3),
# every request a different input (wrk_form.lua with WRK_UNIQUE=1, so each is a cache miss), three hubs side by side:
#   none:  auth none, every limit 0, cache off
#   local: auth api_key (one key, sent as Authorization: Bearer), tenant with rpm/rate/concurrency/quota far
#          above the load, rate_limit global/ip/concurrency set high, backend local; cache on (memory)
#   redis: as local, with rate_limit.backend redis and cache.backend redis (a redis-server started here)
# Hubs pinned to CPU 0; upstream nginx, redis-server and wrk -t1 on CPU 1 (BENCH.md: the server under test on CPU 0,
# what it talks to and the load generator on CPU 1; redis-server idles through the none and local rounds, so every
# scenario runs under the same conditions). A/B/C rounds, medians of RPS, p99 and CPU µs/request of the hub process,
# and of redis-server and the upstream nginx per request of each scenario: on two vCPUs the RPS and p99 of a
# closed-loop c64 run are those of the busier CPU, so these show which one it is. Before the runs, probes show
# whether the chain is wired into the request path: a request without the key (401 expected) and a repeated
# request (X-Cache: HIT expected).
source "$(dirname "$0")/lib.sh"
source "$ROOT/bench/proxy_lib.sh"
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-5}; CONNS=${CONNS:-64}
ensure_bin
uport=$(free_port); rport=$(free_port)
declare -A HPORT=([none]=$(free_port) [local]=$(free_port) [redis]=$(free_port) [cmp]=$(free_port))
# COMPARE_BIN=path: a fourth hub of another build (say the previous commit's) with the redis scenario's config,
# in the same rounds, so two builds are compared on the same machine state
SC=(none local redis)
[ -n "${COMPARE_BIN:-}" ] && SC+=(cmp)
mp3=$(mp3_4k)
mkdir -p "$WORK/www/v1/audio"; cp "$mp3" "$WORK/www/v1/audio/speech"
nginx_start upstream 1 "server { listen 127.0.0.1:$uport backlog=4096; root $WORK/www; sendfile on;
    location = /v1/audio/speech { default_type audio/mpeg; error_page 405 =200 \$uri; } }"
taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  --maxmemory 256mb --maxmemory-policy allkeys-lru --logfile "$WORK/redis.log" &
PIDS+=("$!"); RPID=$!
for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done

KEY="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SHA=$(echo -n "$KEY" | sha256sum | awk '{print $1}')
provider() { cat <<YAML
providers:
  - name: up
    type: openai
    base_url: "http://127.0.0.1:$uport"
    api_key_env: BENCH_KEY
    timeout: 30s
    concurrency: 256
    queue: 10000
YAML
}
policy() { # backend
  cat <<YAML
auth:
  mode: api_key
  keys:
    - { id: k1, sha256: "$SHA", tenant: acme, role: user }
tenants:
  acme: { rpm: 1000000, rate: 1000000, burst: 1000000, concurrency: 100000, quota: { chars_per_day: 0, chars_per_month: 0 } }
rate_limit: { global_rpm: 1000000, ip_rpm: 1000000, concurrency: 100000, backend: $1 }
redis: { url: "redis://127.0.0.1:$rport/0" }
cache: { enabled: true, backend: $( [ "$1" = redis ] && echo redis || echo memory ) }
YAML
}
{ provider; echo "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }"; echo "cache: { enabled: false }"; } >"$WORK/none.yaml"
{ provider; policy local; } >"$WORK/local.yaml"
{ provider; policy redis; } >"$WORK/redis.yaml"
cp "$WORK/redis.yaml" "$WORK/cmp.yaml"
for h in "${SC[@]}"; do
  if [ "$h" = cmp ]; then BIN=$COMPARE_BIN hub_start "$h" "$WORK/$h.yaml" "${HPORT[$h]}"; else hub_start "$h" "$WORK/$h.yaml" "${HPORT[$h]}"; fi
done

# probes
body="input=probe+$RANDOM&voice=alloy&response_format=mp3"
declare -A NOKEY XCACHE
for h in "${SC[@]}"; do
  u="http://127.0.0.1:${HPORT[$h]}/api/generate"
  NOKEY[$h]=$(curl -s -o /dev/null -w '%{http_code}' -d "$body" "$u")
  c1=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" -d "$body" "$u")
  [ "$c1" = 200 ] || { echo "bench: $h answered $c1 with the key" >&2; cat "$WORK/hub-$h.log" >&2; exit 1; }
  XCACHE[$h]=$(curl -s -D - -o /dev/null -H "Authorization: Bearer $KEY" -d "$body" "$u" | tr -d '\r' |
               awk -F': ' 'tolower($1)=="x-cache" {print $2}')
done
rkeys0=$(redis-cli -p "$rport" dbsize)

export WRK_UNIQUE=${UNIQUE:-1} WRK_AUTH="Bearer $KEY"   # UNIQUE=0: the same body every time (cache hits)
for _ in $(seq 1 "$ROUNDS"); do
  for h in "${SC[@]}"; do
    r0=$(cpu_ticks "$RPID"); n0=$(cpu_ticks "${NGINX_WORKER[upstream]}")
    wrk_run "$h" "http://127.0.0.1:${HPORT[$h]}/api/generate" "${HUB_PID[$h]}" "$CONNS" "$DUR"
    r1=$(cpu_ticks "$RPID"); n1=$(cpu_ticks "${NGINX_WORKER[upstream]}")
    tail -1 "$WORK/results" | awk -v r=$((r1 - r0)) -v n=$((n1 - n0)) -v hz="$(clk_tck)" \
      '{ q = $6 > 0 ? $6 : 1; printf "cpu1-%s %.2f %.2f\n", $1, r / hz * 1e6 / q, n / hz * 1e6 / q }' >>"$WORK/results"
  done
done
# what the redis hub itself sent during the wrk runs (commands inside scripts not counted), and its round trips
# before the first byte
hubm=$(curl -s "http://127.0.0.1:${HPORT[redis]}/metrics")
hcmds=$(echo "$hubm" | awk '/^ttshub_redis_commands_total/ {t+=$2} END {print t+0}')
rtsum=$(echo "$hubm" | awk '/^ttshub_redis_round_trips_sum\{when="before_first_byte"\}/ {print $2}')
rtcnt=$(echo "$hubm" | awk '/^ttshub_redis_round_trips_count\{when="before_first_byte"\}/ {print $2}')
tsum=$(echo "$hubm" | awk '/^ttshub_redis_turn_requests_sum\{part="admissions"\}/ {print $2}')
tcnt=$(echo "$hubm" | awk '/^ttshub_redis_turn_requests_count\{part="admissions"\}/ {print $2}')
# Equal load: the closed-loop runs above compare hubs at different rates (each runs as fast as its slowest
# CPU lets it), and a hub's CPU per request falls as its rate rises (more requests share each loop turn). Here
# bench/loadgen (open loop) sends the same fixed rate to the three hubs at once (interleaved schedules), 20 % of
# the redis hub's median RPS above unless EQ_RATE says otherwise (the three share CPU 0, which must stay far from
# saturated), so the hubs' CPU per request and p99 are compared at one operating point. EQ_RATE=0 skips it.
LOADGEN=${LOADGEN:-$(dirname "$BIN")/loadgen}
EQ_RATE=${EQ_RATE:-$(awk -v r="$(med 2 redis)" 'BEGIN {printf "%d", r * 0.2}')}
if [ "$EQ_RATE" -gt 0 ] && [ -x "$LOADGEN" ]; then
  for _ in $(seq 1 "$ROUNDS"); do
    declare -A T0; for h in "${SC[@]}"; do T0[$h]=$(cpu_ticks "${HUB_PID[$h]}"); done
    targets=(); for h in "${SC[@]}"; do targets+=("${HPORT[$h]}/api/generate"); done
    out=$(LOADGEN_AUTH="Bearer $KEY" taskset -c 1 "$LOADGEN" 127.0.0.1 "$EQ_RATE" 16 "$DUR" "${targets[@]}")
    for h in "${SC[@]}"; do
      t1=$(cpu_ticks "${HUB_PID[$h]}")
      awk -v p="target=${HPORT[$h]}/api/generate" -v h="$h" -v d=$((t1 - T0[$h])) -v hz="$(clk_tck)" '$1 == p {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        n = v["ok"] + v["bad"]; printf "eq-%s %.2f %s %d\n", h, (n > 0 ? d / hz * 1e6 / n : 0), v["p99_ms"], v["bad"] }' \
        <<<"$out" >>"$WORK/results"
    done
  done
fi
rkeys1=$(redis-cli -p "$rport" dbsize)
declare -A HWM
for h in "${SC[@]}"; do HWM[$h]=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/${HUB_PID[$h]}/status"); done
rclients=$(redis-cli -p "$rport" info clients | awk -F: '/^connected_clients/ {print $2}' | tr -d '\r')
rcmds=$(redis-cli -p "$rport" info stats | awk -F: '/^total_commands_processed/ {print $2}' | tr -d '\r')

{
  echo "Policy chain cost: POST /api/generate, every request a cache miss, wrk -t1 c$CONNS, ${DUR}s x $ROUNDS rounds, medians"
  echo "   hubs pinned to CPU 0; upstream nginx (4096-byte MP3), redis-server and wrk on CPU 1"
  echo "probes: status without the key (401 if auth is wired): none ${NOKEY[none]}, local ${NOKEY[local]}, redis ${NOKEY[redis]};"
  echo "        X-Cache of a repeated request: none '${XCACHE[none]}', local '${XCACHE[local]}', redis '${XCACHE[redis]}'"
  echo "redis: keys before the runs $rkeys0, after $rkeys1; connected clients $rclients (1 is redis-cli); commands processed $rcmds"
  printf "%-28s %10s %10s %12s %8s %9s %14s %14s\n" "" RPS "p99 ms" "CPU us/req" non2xx "peak MiB" \
    "redis us/req" "upstream us/req"
  for h in "${SC[@]}"; do
    case $h in none) n="none (no policy)";; local) n="policy, backend local";; redis) n="policy, backend redis";;
      cmp) n="redis, COMPARE_BIN";; esac
    printf "%-28s %10.0f %10.3f %12.2f %8d %9s %14.2f %14.2f\n" "$n" "$(med 2 $h)" "$(med 3 $h)" "$(med 4 $h)" \
      "$(sum_col 5 $h)" "${HWM[$h]}" "$(med 2 cpu1-$h)" "$(med 3 cpu1-$h)"
  done
  echo "   (redis and upstream: CPU of redis-server and of the upstream nginx worker per request, both on CPU 1 with wrk)"
  if [ "$EQ_RATE" -gt 0 ] && [ -x "$LOADGEN" ]; then
    echo "equal load: loadgen (open loop) at $EQ_RATE req/s to each hub at once, 16 connections each, ${DUR}s x $ROUNDS, medians"
    for h in "${SC[@]}"; do
      printf "   %-8s CPU %7.2f us/req   p99 %8.3f ms   non2xx %d\n" "$h" "$(med 2 eq-$h)" "$(med 3 eq-$h)" "$(sum_col 4 eq-$h)"
    done
    awk -v l="$(med 2 eq-local)" -v r="$(med 2 eq-redis)" -v lp="$(med 3 eq-local)" -v rp="$(med 3 eq-redis)" 'BEGIN {
      printf "   redis vs local at equal load: CPU/req %.2fx (%+.1f us; target <= 1.3), p99 %.2fx (target <= 1.5)\n", r / l, r - l, rp / lp }'
  fi
  awk -v req="$(sum_col 6 redis)" -v c="$hcmds" -v s="${rtsum:-0}" -v n="${rtcnt:-0}" -v ts="${tsum:-0}" \
      -v tc="${tcnt:-0}" 'BEGIN {
    printf "redis hub: %.2f Redis commands sent per request; %.2f blocking round trips before the first byte; %.1f admissions per script\n",
      (req > 0 ? c / req : 0), (n > 0 ? s / n : 0), (tc > 0 ? ts / tc : 0) }'
  if [ -n "${COMPARE_BIN:-}" ]; then
    awk -v lr="$(med 2 local)" -v rr="$(med 2 cmp)" -v lp="$(med 3 local)" -v rp="$(med 3 cmp)" \
        -v lu="$(med 4 local)" -v ru="$(med 4 cmp)" -v el="$(med 2 eq-local)" -v er="$(med 2 eq-cmp)" 'BEGIN {
      printf "COMPARE_BIN vs local: RPS %.2fx, p99 %.2fx, CPU/req %.2fx; equal load CPU/req %.2fx\n",
        rr/lr, rp/lp, ru/lu, (el > 0 ? er/el : 0) }'
  fi
  awk -v lr="$(med 2 local)" -v rr="$(med 2 redis)" -v lp="$(med 3 local)" -v rp="$(med 3 redis)" \
      -v lu="$(med 4 local)" -v ru="$(med 4 redis)" 'BEGIN {
    printf "redis vs local: RPS %.2fx (target >= 0.6), p99 %.2fx (target <= 1.5), CPU/req %.2fx (target <= 1.3)\n",
      rr/lr, rp/lp, ru/lu }'
  awk -v nr="$(med 2 none)" -v lr="$(med 2 local)" -v rr="$(med 2 redis)" -v nu="$(med 4 none)" \
      -v lu="$(med 4 local)" -v ru="$(med 4 redis)" 'BEGIN {
    printf "vs none: local RPS %.2fx, CPU/req %.2fx (%+.1f us); redis RPS %.2fx, CPU/req %.2fx (%+.1f us)\n",
      lr/nr, lu/nu, lu-nu, rr/nr, ru/nu, ru-nu }'
} | tee "$OUT/policy_cost.txt"
