#!/usr/bin/env bash
# Clone cost: what carrying a library voice's reference costs the hub, per request.
# One hub with one cosyvoice provider whose engine is nginx answering like CosyVoice (headerless s16 PCM at
# 22050 Hz, 1 s, no Content-Type) on /inference_sft and /inference_zero_shot; a library voice made from a
# 10-second reference (POST /api/extract_voice). Two request kinds through the same hub, same text, every
# request a cache miss (cache off):
#   plain: voice=alloy        -> POST /inference_sft (a form with the text and the speaker id)
#   clone: voice=<library id> -> POST /inference_zero_shot (multipart with the 10 s reference inline: its
#          compact form, 16 kHz FLAC, ~170 KB of speech, or the 480 KB WAV with a hub that has none)
# Hub pinned to CPU 0, nginx and wrk -t1 on CPU 1; A/B rounds; medians of RPS, p99 and the hub's CPU µs per
# request (utime+stime from /proc). Target: clone CPU/request < 1.10x plain. ONLY=clone or ONLY=plain runs one
# kind (for profiling).
source "$(dirname "$0")/lib.sh"
source "$ROOT/bench/proxy_lib.sh"
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-5}; CONNS=${CONNS:-16}; REF_SECONDS=${REF_SECONDS:-10}
FORMAT=${FORMAT:-wav}
ensure_bin
uport=$(free_port); hport=$(free_port)

# the engine's answer: 1 s of headerless PCM, as CosyVoice streams it
ffmpeg -loglevel error -y -f lavfi -i sine=f=300:d=1 -ar 22050 -ac 1 -f s16le "$WORK/answer.pcm"
mkdir -p "$WORK/www"
cp "$WORK/answer.pcm" "$WORK/www/inference_sft"
cp "$WORK/answer.pcm" "$WORK/www/inference_zero_shot"
# the zero-shot route logs each request's body length (Content-Length: the bytes the engine receives), buffered
nginx_start upstream 1 "log_format reqlen '\$content_length';
  server { listen 127.0.0.1:$uport backlog=4096; root $WORK/www; sendfile on;
    client_max_body_size 32m; client_body_buffer_size 1m;
    location / { default_type application/octet-stream; error_page 405 =200 \$uri; }
    location = /inference_zero_shot { access_log $WORK/zs.log reqlen buffer=256k flush=1s;
      default_type application/octet-stream; error_page 405 =200 \$uri; } }"

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
    timeout: 30s
    concurrency: 256
    queue: 10000
YAML
hub_start clone "$WORK/hub.yaml" "$hport"
url="http://127.0.0.1:$hport"

# the library voice: a 10-second reference of speech (espeak-ng, cut or padded to REF_SECONDS). A tone would
# make the compact form (16 kHz FLAC) unrealistically small. REF_NOISE_DB (e.g. -55) adds a room's noise
# floor at that level (dBFS, pink), as a microphone records it: FLAC compresses noise least.
espeak-ng -v en-us -s 160 -w "$WORK/speech.wav" "A reference for a cloned voice is a few seconds of \
someone speaking clearly, at an even pace, in a quiet room. This one was made to measure what carrying it \
costs the hub on every request, so it goes on for a while: the quick brown fox jumps over the lazy dog, \
and then it jumps back again, twice, before the dog wakes up and wonders what all the noise was about."
if [ -n "${REF_NOISE_DB:-}" ]; then
  amp=$(awk -v d="$REF_NOISE_DB" 'BEGIN {printf "%.6f", 10 ^ (d / 20)}')
  ffmpeg -loglevel error -y -i "$WORK/speech.wav" -f lavfi -i "anoisesrc=c=pink:a=$amp:r=22050" \
    -filter_complex "[0]apad[s];[s][1]amix=inputs=2:duration=shortest:normalize=0" -t "$REF_SECONDS" \
    -ar 44100 -ac 1 "$WORK/ref.wav"
else
  ffmpeg -loglevel error -y -i "$WORK/speech.wav" -af apad -t "$REF_SECONDS" -ar 44100 -ac 1 "$WORK/ref.wav"
fi
code=$(curl -s -o "$WORK/extract.json" -w '%{http_code}' -F "audio=@$WORK/ref.wav;type=audio/wav" \
       -F voice_id=bench_clone -F "reference_text=a reference of ten seconds" "$url/api/extract_voice")
[ "$code" = 201 ] || { echo "bench: extract_voice answered $code: $(cat "$WORK/extract.json")" >&2; exit 1; }
refbytes=$(curl -s "$url/api/voices/bench_clone/audio" | wc -c)

# probes: each kind reaches its route
for v in alloy bench_clone; do
  c=$(curl -s -o /dev/null -w '%{http_code}' -d "input=probe&voice=$v&response_format=$FORMAT" "$url/api/generate")
  [ "$c" = 200 ] || { echo "bench: voice $v answered $c" >&2; cat "$WORK/hub-clone.log" >&2; exit 1; }
done

for _ in $(seq 1 40); do [ -s "$WORK/zs.log" ] && break; sleep 0.1; done
sent=$(tail -1 "$WORK/zs.log" 2>/dev/null || echo 0)

export WRK_UNIQUE=1 WRK_FORMAT=$FORMAT
for _ in $(seq 1 "$ROUNDS"); do
  [ "${ONLY:-}" = clone ] || WRK_VOICE=alloy wrk_run plain "$url/api/generate" "${HUB_PID[clone]}" "$CONNS" "$DUR"
  [ "${ONLY:-}" = plain ] || WRK_VOICE=bench_clone wrk_run clone "$url/api/generate" "${HUB_PID[clone]}" "$CONNS" "$DUR"
done

{
  echo "Clone cost: POST /api/generate (response_format=$FORMAT), cosyvoice provider, engine = nginx answering 1 s of"
  echo "   22050 Hz PCM; clone requests carry a ${REF_SECONDS}-second library reference of speech inline"
  echo "   (stored: $refbytes-byte WAV${REF_NOISE_DB:+, a noise floor at $REF_NOISE_DB dBFS}; each request to"
  echo "   /inference_zero_shot: $sent bytes, multipart); wrk -t1 c$CONNS, ${DUR}s x $ROUNDS rounds A/B, medians;"
  echo "   hub pinned to CPU 0, nginx and wrk on CPU 1"
  printf "%-28s %10s %10s %12s %8s\n" "" RPS "p99 ms" "CPU us/req" non2xx
  for k in plain clone; do
    case $k in plain) n="plain voice (sft)";; clone) n="library voice (zero-shot)";; esac
    printf "%-28s %10.0f %10.3f %12.2f %8d\n" "$n" "$(med 2 $k)" "$(med 3 $k)" "$(med 4 $k)" "$(sum_col 5 $k)"
  done
  awk -v pu="$(med 4 plain)" -v cu="$(med 4 clone)" -v pr="$(med 2 plain)" -v cr="$(med 2 clone)" 'BEGIN {
    printf "clone vs plain: CPU/req %.3fx (%+.1f us, %+.1f%%; target < +10%%), RPS %.2fx\n",
      cu/pu, cu-pu, (cu/pu-1)*100, cr/pr }'
} | tee "$OUT/clone_cost.txt"
