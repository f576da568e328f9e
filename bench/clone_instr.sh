#!/usr/bin/env bash
# Clone cost in instructions: the same setup as clone_cost.sh (cosyvoice provider, nginx as the engine, a
# 10-second library reference), with the hub under callgrind. N sequential requests of each kind (plain
# voice, then library voice); the hub's user-space instructions per request come from callgrind's totals
# between zeroing and dumping the counters. Kernel time (the loopback copies of the reference) is not in
# these numbers: clone_cost.sh measures it. For a machine too loaded for CPU-time ratios.
source "$(dirname "$0")/lib.sh"
source "$ROOT/bench/proxy_lib.sh"
N=${N:-100}; REF_SECONDS=${REF_SECONDS:-10}
ensure_bin
command -v valgrind >/dev/null || { echo "bench: valgrind is not installed" >&2; exit 1; }
uport=$(free_port); hport=$(free_port)
ffmpeg -loglevel error -y -f lavfi -i sine=f=300:d=1 -ar 22050 -ac 1 -f s16le "$WORK/answer.pcm"
mkdir -p "$WORK/www"
cp "$WORK/answer.pcm" "$WORK/www/inference_sft"
cp "$WORK/answer.pcm" "$WORK/www/inference_zero_shot"
nginx_start upstream 1 "server { listen 127.0.0.1:$uport backlog=4096; root $WORK/www; sendfile on;
    client_max_body_size 32m; client_body_buffer_size 1m;
    location / { default_type application/octet-stream; error_page 405 =200 \$uri; } }"
cat >"$WORK/hub.yaml" <<YAML
data_dir: "$WORK/data"
rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }
cache: { enabled: false }
limits: { max_upload: 20MiB }
voice_library: { backend: fs, min_seconds: 2, max_seconds: 60 }
providers:
  - name: cosy
    type: cosyvoice
    base_url: "http://127.0.0.1:$uport"
    timeout: 60s
YAML
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" "$BIN" serve -c "$WORK/hub.yaml" \
  --listen "127.0.0.1:$hport" --log-level warn >"$WORK/hub.log" 2>&1 &
vpid=$!
PIDS+=("$vpid")
url="http://127.0.0.1:$hport"
for _ in $(seq 1 600); do curl -fs -o /dev/null "$url/health" && break; sleep 0.1; done
curl -fs -o /dev/null "$url/health" || { cat "$WORK/hub.log" >&2; exit 1; }
ffmpeg -loglevel error -y -f lavfi -i "sine=f=220:d=$REF_SECONDS,vibrato=f=5:d=0.5" -ar 44100 -ac 1 "$WORK/ref.wav"
code=$(curl -s -o /dev/null -w '%{http_code}' -F "audio=@$WORK/ref.wav;type=audio/wav" \
       -F voice_id=bench_clone -F "reference_text=a reference of ten seconds" "$url/api/extract_voice")
[ "$code" = 201 ] || { echo "bench: extract_voice answered $code" >&2; exit 1; }

# instructions per request of one kind: zero, N requests (each text different: no coalescing), dump
per_req() { # voice
  for i in 1 2 3; do curl -s -o /dev/null -d "input=warm $i&voice=$1&response_format=wav" "$url/api/generate"; done
  callgrind_control -z "$vpid" >/dev/null
  for i in $(seq 1 "$N"); do
    c=$(curl -s -o /dev/null -w '%{http_code}' -d "input=text $RANDOM $i&voice=$1&response_format=wav" "$url/api/generate")
    [ "$c" = 200 ] || { echo "bench: $1 answered $c" >&2; exit 1; }
  done
  rm -f "$WORK"/cg.*.[0-9]*
  callgrind_control --dump="$1" "$vpid" >/dev/null
  local f; f=$(ls -t "$WORK"/cg.* | grep -v "^$WORK/cg.$vpid\$" | head -1)
  awk -v n="$N" '/^(summary|totals):/ {print $2 / n; exit}' "$f"
}
plain=$(per_req alloy)
clone=$(per_req bench_clone)
{
  echo "Clone cost in hub instructions (callgrind, user space only), $N sequential requests per kind,"
  echo "   cosyvoice provider, ${REF_SECONDS}-second library reference inline"
  awk -v p="$plain" -v c="$clone" 'BEGIN {
    printf "plain voice (sft)          %12.0f instructions/request\n", p
    printf "library voice (zero-shot)  %12.0f instructions/request\n", c
    printf "clone vs plain: %.3fx (%+.0f instructions, %+.1f%%)\n", c/p, c-p, (c/p-1)*100 }'
} | tee "$OUT/clone_instr.txt"
