#!/usr/bin/env bash
# P7 (BENCH.md): wav -> mp3 transcoding, ours (th_audio_convert via build/bench_transcode) against the
# ffmpeg CLI on the same file, same bitrate (64 kbit/s), same rate (24 kHz) and mono, pinned to CPU 0.
# Rounds alternate A/B/A/B (5 each); the table shows medians of wall and CPU time per conversion.
#
#   bench/p7_transcode.sh            (expects build/bench_transcode; BENCH_TRANSCODE=path overrides)
#
# Both sides are measured the same way: one process per conversion, wall and user+sys CPU from
# /usr/bin/time, so process start and file I/O count on both sides. Ours also reports its in-process
# conversion time (N conversions in one process) as a second row.
# Our mp3 encoder runs LAME at quality 7 (lame -f); the CLI runs LAME's default (3) unless told, so
# a third row runs the CLI with -compression_level 7 for a like-for-like comparison.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TRANSCODE=${BENCH_TRANSCODE:-$ROOT/build/bench_transcode}
ROUNDS=${P7_ROUNDS:-5}
CPU=${P7_CPU:-0}
[ -x "$TRANSCODE" ] || { echo "p7: $TRANSCODE not built (cmake --build build --target bench_transcode)"; exit 1; }
command -v ffmpeg >/dev/null || { echo "p7: ffmpeg CLI not installed"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
in=$work/in.wav

# About 60 s of speech from espeak-ng (22,050 Hz s16 mono, like the embedded engine), else a sine.
if command -v espeak-ng >/dev/null; then
  text=""
  for _ in $(seq 1 9); do
    text+="The gateway converts synthesized speech into the format each client asks for, quickly and without temporary files. "
  done
  espeak-ng -w "$in" "$text"
  src="espeak-ng"
else
  ffmpeg -v error -y -f lavfi -i "sine=frequency=440:sample_rate=22050:duration=60" -ac 1 -c:a pcm_s16le "$in"
  src="ffmpeg sine"
fi
audio_s=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$in")

# run LABEL CMD...: appends "wall cpu" of one pinned run to $work/LABEL.
run() {
  local label=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$work/time.$label" taskset -c "$CPU" "$@" > "$work/stdout.$label" 2>&1 \
    || { echo "p7: $label failed:"; cat "$work/stdout.$label"; exit 1; }
  awk '{printf "%s %.3f\n", $1, $2 + $3}' "$work/time.$label" >> "$work/$label"
}

for r in $(seq 1 "$ROUNDS"); do
  run ours "$TRANSCODE" "$in" 1 64000 -o "$work/ours.mp3"
  run cli ffmpeg -nostdin -v error -y -i "$in" -c:a libmp3lame -b:a 64k -ar 24000 -ac 1 "$work/cli.mp3"
  run cli_q7 ffmpeg -nostdin -v error -y -i "$in" -c:a libmp3lame -compression_level 7 -b:a 64k -ar 24000 -ac 1 \
    "$work/cli_q7.mp3"
done
# In-process: N conversions in one process, conversion time only.
taskset -c "$CPU" "$TRANSCODE" "$in" $((ROUNDS * 2)) 64000 > "$work/inproc.txt"
inproc=$(grep '^RESULT' "$work/inproc.txt")
in_wall=$(sed -E 's/.*wall_med_s=([0-9.]+).*/\1/' <<< "$inproc")
in_cpu=$(sed -E 's/.*cpu_med_s=([0-9.]+).*/\1/' <<< "$inproc")

med() { awk -v c="$2" '{print $c}' "$work/$1" | median; }
ours_w=$(med ours 1); ours_c=$(med ours 2)
cli_w=$(med cli 1); cli_c=$(med cli 2)
q7_w=$(med cli_q7 1); q7_c=$(med cli_q7 2)

probe() { ffprobe -v error -show_entries stream=codec_name,sample_rate,channels,bit_rate -of csv=p=0 "$1"; }
echo "P7 wav -> mp3: $(printf '%.1f' "$audio_s") s of $src audio, 64 kbit/s, 24 kHz mono, taskset -c $CPU," \
     "$ROUNDS rounds A/B/A/B, medians"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs;" \
     "ffmpeg $(ffmpeg -version | head -1 | awk '{print $3}')"
echo "outputs: ours $(probe "$work/ours.mp3") | cli $(probe "$work/cli.mp3")"
printf '%-34s %9s %9s %10s %10s\n' "side" "wall_s" "cpu_s" "rt_wall" "rt_cpu"
row() { awk -v n="$1" -v w="$2" -v c="$3" -v a="$audio_s" \
  'BEGIN {printf "%-34s %9.3f %9.3f %9.0fx %9.0fx\n", n, w, c, a / w, a / c}'; }
row "ours (process, bench_transcode)" "$ours_w" "$ours_c"
row "ours (in-process conversion)" "$in_wall" "$in_cpu"
row "ffmpeg CLI (default, lame q3)" "$cli_w" "$cli_c"
row "ffmpeg CLI -compression_level 7" "$q7_w" "$q7_c"
awk -v ow="$ours_w" -v oc="$ours_c" -v cw="$cli_w" -v cc="$cli_c" -v qw="$q7_w" -v qc="$q7_c" 'BEGIN {
  printf "ratio ours/CLI (speed, >= 1.0 means ours is faster): wall %.2f, cpu %.2f (CLI default)\n", cw / ow, cc / oc
  printf "ratio ours/CLI (speed) against the same LAME quality:   wall %.2f, cpu %.2f (CLI q7)\n", qw / ow, qc / oc
}'
awk -v a="$audio_s" -v c="$in_cpu" 'BEGIN {
  printf "target: >= 200x realtime per core (in-process cpu: %.0fx): %s\n", a / c, (a / c >= 200 ? "met" : "NOT met") }'
