#!/usr/bin/env bash
# P6: long text. 20,000 characters to POST /api/generate on a hub with 4 openai upstreams (strategy round_robin):
# the hub splits the text (the openai kind's 4096-character limit) and synthesises the pieces in parallel, vs the
# same text split client-side (sentence ends, <= 4096 characters each, greedy) and sent piece by piece, in
# sequence, to the same hub, the audio concatenated. Upstreams: 4 engine fakes (tests/e2e/fakes, kind openai,
# --latency 0.3 = 300 ms per chunk, --ms-per-char 5 to keep the audio small). Alternating rounds, medians.
source "$(dirname "$0")/lib.sh"
source "$ROOT/bench/proxy_lib.sh"
ROUNDS=${ROUNDS:-3}; CHARS=${CHARS:-20000}; FORMAT=${FORMAT:-mp3}; LATENCY=${LATENCY:-0.3}
ensure_bin
hport=$(free_port)
ports=()
for i in 1 2 3 4; do
  ( cd "$ROOT/tests/e2e" && exec /usr/bin/python3 -m fakes.engines --kind openai --port 0 --latency "$LATENCY" \
      --ms-per-char 5 --api-key bench-upstream-key ) >"$WORK/fake$i.out" 2>&1 &
  PIDS+=("$!")
done
for i in 1 2 3 4; do
  for _ in $(seq 1 200); do grep -q READY "$WORK/fake$i.out" && break; sleep 0.05; done
  p=$(awk '/READY/ {print $2}' "$WORK/fake$i.out"); [ -n "$p" ] || { cat "$WORK/fake$i.out" >&2; exit 1; }
  ports+=("$p")
done
{
  echo "providers:"
  for i in 0 1 2 3; do cat <<YAML
  - name: up$i
    type: openai
    base_url: "http://127.0.0.1:${ports[$i]}"
    api_key_env: BENCH_KEY
    timeout: 60s
    concurrency: 16
    queue: 64
YAML
  done
  echo "router: { strategy: round_robin, hedge_after: 0s }"
  echo "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }"
  echo "cache: { enabled: false }"
} >"$WORK/hub.yaml"
hub_start hub "$WORK/hub.yaml" "$hport"

fake_calls() {
  local p out=""
  for p in "${ports[@]}"; do
    out+="$(curl -s "http://127.0.0.1:$p/__fake/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["calls"])') "
  done
  echo "$out"
}
# warm-up: one untimed hub request; note how the hub spread its pieces over the 4 fakes
timeout 60 /usr/bin/python3 "$ROOT/bench/p6_client.py" --port "$hport" --chars "$CHARS" --format "$FORMAT" --probe \
  >"$WORK/probe.jsonl" || { cat "$WORK/probe.jsonl" "$WORK/hub-hub.log" >&2; exit 1; }
spread=$(fake_calls)
for p in "${ports[@]}"; do curl -s -X POST "http://127.0.0.1:$p/__fake/reset" >/dev/null; done
timeout 170 /usr/bin/python3 "$ROOT/bench/p6_client.py" --port "$hport" --chars "$CHARS" --rounds "$ROUNDS" \
  --format "$FORMAT" --save-dir "$WORK" >"$WORK/p6.jsonl"
# audio length of the last round's results, decoded (s16le mono 24 kHz = 48000 bytes per second)
secs() { ffmpeg -v error -i "$1" -f s16le -ac 1 -ar 24000 - 2>/dev/null | wc -c | awk '{printf "%.2f", $1 / 48000}'; }
hsec=$(secs "$WORK/hub.$FORMAT"); ssec=$(secs "$WORK/sequential.$FORMAT")
calls=$(fake_calls)
python3 - "$WORK/p6.jsonl" "$CHARS" "$FORMAT" "$LATENCY" "$calls" "$hsec" "$ssec" "$spread" <<'PY' | tee "$OUT/p6_longtext.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
info = rows[0]
def col(m, k): return [r[k] for r in rows if r["mode"] == m]
h, s = statistics.median(col("hub", "wall_s")), statistics.median(col("sequential", "wall_s"))
print(f"P6 long text: {info['chars']} characters, response_format {sys.argv[3]}, 4 openai fakes "
      f"(latency {sys.argv[4]} s per request, 5 ms of audio per character), round_robin; "
      f"{len(col('hub', 'wall_s'))} alternating rounds, medians")
print(f"client-side split: {info['chunks']} pieces of {info['chunk_chars']} characters; "
      f"synthesis calls per fake: {sys.argv[8].strip()} for one hub request (warm-up), "
      f"{sys.argv[5].strip()} over the timed rounds")
print(f"{'':34} {'wall s':>8} {'audio bytes':>12} {'audio s':>8}   rounds (s)")
print(f"{'hub (one request, split inside)':34} {h:8.3f} {col('hub','bytes')[-1]:12d} {sys.argv[6]:>8}   {col('hub','wall_s')}")
print(f"{'client split, sequential':34} {s:8.3f} {col('sequential','bytes')[-1]:12d} {sys.argv[7]:>8}   {col('sequential','wall_s')}")
print(f"(audio s: the last round's audio decoded; {info['chars']} chars x 5 ms = {info['chars'] * 0.005:.0f} s expected)")
print(f"ratio hub/sequential wall time: {h/s:.2f} (target <= 0.33)")
PY
