#!/usr/bin/env bash
# P5 (BENCH.md): the embedded espeak-ng provider (build/bench_espeak) against the espeak-ng CLI writing
# the same text to a WAV file (espeak-ng -v en-us -w out.wav -f text.txt), pinned to CPU 0.
#
#   bench/p5_espeak.sh            (expects build/bench_espeak; BENCH_ESPEAK=path overrides)
#
# Rounds alternate A/B (5 each, P5_ROUNDS). Both sides run as one process per synthesis, measured the
# same way (wall, user+sys CPU of the child via wait4), so process start, library init and file I/O count on
# both sides; the audio seconds come from each side's own output. A second row runs N syntheses in one
# process and measures each in-process (the provider already created): that is the number the gateway
# sees, plus our time to first PCM byte. The CLI's first byte cannot be observed cleanly (it writes the
# file as it goes, buffered), so only its total wall time is shown.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCH=${BENCH_ESPEAK:-$ROOT/build/bench_espeak}
ROUNDS=${P5_ROUNDS:-5}
CPU=${P5_CPU:-0}
[ -x "$BENCH" ] || { echo "p5: $BENCH not built (cmake --build build --target bench_espeak)"; exit 1; }
command -v espeak-ng >/dev/null || { echo "p5: espeak-ng CLI not installed"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
text=$work/text.txt

# A fixed English text of about one minute of speech at 175 words per minute (~170 words).
cat > "$text" <<'EOF'
The gateway turns text into speech for many clients at once. Each request arrives with a voice, a format
and a speed. The hub checks who is asking, how much they may use, and which engine should answer. When the
embedded engine answers, it splits the text into sentences and speaks them one after another, so the first
sound reaches the client while the rest is still being made. A long text does not make a short one wait,
because the engine takes turns between the jobs it holds. When a client reads slowly, its job rests
between sentences and the others go on. When a client goes away, its job stops within a few milliseconds,
and the memory it held is given back. The audio is sixteen bit mono at twenty two thousand and fifty
samples per second, which the hub can turn into mp3, opus, aac, flac or wav on the way out. All of this
runs on a small machine with two processors, next to the other engines and the web dashboard. The numbers
in this benchmark are medians of several rounds, measured side by side in one run, because small machines
are noisy and a single number can mislead. That is the whole story, told in about one minute.
EOF

# run LABEL CMD...: appends "wall cpu" of one pinned run to $work/LABEL. bench_espeak --run measures the
# child with wait4 (microseconds), the same way for both sides.
run() {
  local label=$1; shift
  taskset -c "$CPU" "$BENCH" --run "$@" > "$work/time.$label" 2> "$work/stderr.$label" \
    || { echo "p5: $label failed:"; cat "$work/time.$label" "$work/stderr.$label"; exit 1; }
  tail -n 1 "$work/time.$label" >> "$work/$label"
}

for _ in $(seq 1 "$ROUNDS"); do
  run ours "$BENCH" "$text" 1 -o "$work/ours.pcm"
  run cli espeak-ng -v en-us -w "$work/cli.wav" -f "$text"
done
# In-process: N syntheses in one process, each measured on its own.
taskset -c "$CPU" "$BENCH" "$text" $((ROUNDS * 2)) > "$work/inproc.txt"
inproc=$(grep '^RESULT' "$work/inproc.txt")
field() { sed -E "s/.*[ ]$1=([0-9.]+).*/\1/" <<< "$inproc"; }
in_audio=$(field audio_s); in_wall=$(field wall_med_s); in_cpu=$(field cpu_med_s); in_first=$(field first_byte_med_ms)

ours_audio=$(awk '{print $1 / 2 / 22050}' <<< "$(stat -c %s "$work/ours.pcm")")
cli_audio=$(awk '{print ($1 - 44) / 2 / 22050}' <<< "$(stat -c %s "$work/cli.wav")")
med() { awk -v c="$2" '{print $c}' "$work/$1" | median; }
ours_w=$(med ours 1); ours_c=$(med ours 2)
cli_w=$(med cli 1); cli_c=$(med cli 2)

echo "P5 espeak-ng: $(wc -w < "$text") words of English, voice en-us, taskset -c $CPU, $ROUNDS rounds A/B/A/B, medians"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs;" \
     "espeak-ng $(espeak-ng --version | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1)"
printf '%-36s %8s %9s %9s %10s %10s %14s\n' "side" "audio_s" "wall_s" "cpu_s" "rt_wall" "rt_cpu" "first_byte_ms"
row() { awk -v n="$1" -v a="$2" -v w="$3" -v c="$4" -v f="$5" \
  'BEGIN {printf "%-36s %8.2f %9.3f %9.3f %9.0fx %9.0fx %14s\n", n, a, w, c, a / w, (c > 0 ? a / c : 0), f}'; }
row "ours (process, bench_espeak)" "$ours_audio" "$ours_w" "$ours_c" "-"
row "ours (in-process, provider ready)" "$in_audio" "$in_wall" "$in_cpu" "$in_first"
row "espeak-ng CLI -w (process)" "$cli_audio" "$cli_w" "$cli_c" "n/a"
awk -v oa="$ours_audio" -v ow="$ours_w" -v oc="$ours_c" -v ca="$cli_audio" -v cw="$cli_w" -v cc="$cli_c" \
    -v ia="$in_audio" -v ic="$in_cpu" 'BEGIN {
  printf "ratio ours/CLI (audio s per CPU s, >= 1.0 means ours is faster): process %.2f, in-process %.2f\n",
         (oa / oc) / (ca / cc), (ia / ic) / (ca / cc)
  printf "ratio ours/CLI (audio s per wall s): process %.2f\n", (oa / ow) / (ca / cw)
}'
awk -v a="$in_audio" -v c="$in_cpu" -v f="$in_first" 'BEGIN {
  printf "target: >= 100x realtime (in-process cpu: %.0fx): %s; first byte < 50 ms (%.2f ms): %s\n",
         a / c, (a / c >= 100 ? "met" : "NOT met"), f, (f < 50 ? "met" : "NOT met") }'
