#!/usr/bin/env bash
# Reload cost: P1's setup (POST /api/generate -> openai provider -> upstream nginx serving a 4096-byte MP3, every
# request a cache miss), one hub, the same load with and without ten config reloads a second (SIGHUP; each
# reload a real swap: the config file alternates between two versions that differ in a tenant's limit, and
# every third swap also changes the provider, so a provider is retired and drained under load too).
# Hub pinned to CPU 0; nginx, wrk -t1 and the reload loop on CPU 1. A/B rounds, medians of RPS, p99 and hub CPU
# µs/request; errors are non-2xx answers plus wrk's socket errors. Target: p99 within 10 % and zero errors.
source "$(dirname "$0")/lib.sh"
source "$ROOT/bench/proxy_lib.sh"
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-5}; CONNS=${CONNS:-64}; RATE=${RATE:-10}
ensure_bin
uport=$(free_port); hport=$(free_port)
mp3=$(mp3_4k)
mkdir -p "$WORK/www/v1/audio"; cp "$mp3" "$WORK/www/v1/audio/speech"
nginx_start upstream 1 "server { listen 127.0.0.1:$uport backlog=4096; root $WORK/www; sendfile on;
    location = /v1/audio/speech { default_type audio/mpeg; error_page 405 =200 \$uri; } }"
version() { # rpm timeout
  cat <<YAML
data_dir: "$WORK/data"
reload: { watch: false }
cache: { enabled: false }
rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }
tenants:
  acme: { rpm: $1 }
providers:
  - name: up
    type: openai
    base_url: "http://127.0.0.1:$uport"
    api_key_env: BENCH_KEY
    timeout: $2
    concurrency: 256
    queue: 10000
YAML
}
version 100 30s >"$WORK/hub.yaml"
hub_start hub "$WORK/hub.yaml" "$hport"
pid=${HUB_PID[hub]}

# the reload loop: RATE SIGHUPs a second, each with the other version of the file in place (one small python
# process, paced by the clock: forking shell tools ten times a second would load CPU 1, where wrk runs)
version 101 30s >"$WORK/v1.yaml"; version 100 30s >"$WORK/v0.yaml"; version 101 31s >"$WORK/v3.yaml"
RELOADER='
import os, signal, sys, time
work, pid, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
texts = [open(os.path.join(work, n)).read() for n in ("v0.yaml", "v1.yaml", "v3.yaml")]
t0, i = time.monotonic(), 0
while True:
    i += 1
    text = texts[2] if i % 3 == 0 else texts[i % 2]
    tmp = os.path.join(work, "hub.yaml.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(work, "hub.yaml"))
    os.kill(pid, signal.SIGHUP)
    time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
'

reloads() { curl -s "http://127.0.0.1:$hport/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["reloads"]["ok"])'; }

# wrk_run plus socket errors (column 7)
run() { # label
  local before after out
  before=$(reloads)
  wrk_run "$1" "http://127.0.0.1:$hport/api/generate" "$pid" "$CONNS" "$DUR" 2>"$WORK/wrk-err"
  after=$(reloads)
  local serr; serr=$( (grep -o 'connect [0-9]*, read [0-9]*, write [0-9]*, timeout [0-9]*' "$WORK/wrk-err" || true) |
    awk '{gsub(",",""); print $2+$4+$6+$8}')
  sed -i '$ s/$/ '"${serr:-0} $((after - before))"'/' "$WORK/results"
}

export WRK_UNIQUE=1
for _ in $(seq 1 "$ROUNDS"); do
  run still
  taskset -c 1 python3 -c "$RELOADER" "$WORK" "$pid" "$RATE" &
  rpid=$!
  PIDS+=("$rpid")
  run reloading
  kill "$rpid"; wait "$rpid" 2>/dev/null || true
done
alive=$(kill -0 "$pid" 2>/dev/null && echo yes || echo no)
refused=$(curl -s "http://127.0.0.1:$hport/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["reloads"]["refused"])')

{
  echo "Reload cost: POST /api/generate (cache misses) to an nginx upstream, wrk -t1 c$CONNS, ${DUR}s x $ROUNDS rounds, medians"
  echo "   hub pinned to CPU 0; nginx, wrk and the reload loop ($RATE SIGHUPs/s, each a real swap) on CPU 1"
  printf "%-22s %10s %10s %12s %8s %12s %14s\n" "" RPS "p99 ms" "CPU us/req" non2xx "sock errors" "reloads/round"
  for l in still reloading; do
    case $l in still) n="no reload";; reloading) n="$RATE reloads/s";; esac
    printf "%-22s %10.0f %10.3f %12.2f %8d %12d %14s\n" "$n" "$(med 2 $l)" "$(med 3 $l)" "$(med 4 $l)" \
      "$(sum_col 5 $l)" "$(sum_col 7 $l)" "$(med 8 $l)"
  done
  awk -v sr="$(med 2 still)" -v rr="$(med 2 reloading)" -v sp="$(med 3 still)" -v rp="$(med 3 reloading)" \
      -v su="$(med 4 still)" -v ru="$(med 4 reloading)" 'BEGIN {
    printf "reloading vs none: RPS %.2fx, p99 %.2fx (target <= 1.10x), CPU/req %.2fx\n", rr/sr, rp/sp, ru/su }'
  echo "errors under reload: $(( $(sum_col 5 reloading) + $(sum_col 7 reloading) )) (target 0); refused reloads: $refused; hub alive after: $alive"
} | tee "$OUT/reload.txt"
