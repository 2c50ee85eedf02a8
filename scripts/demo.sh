#!/usr/bin/env bash
# The main job, end to end on one machine: build, start the stack (`mochi up`: embedded
# nats-server, coordinator, one GPU node, gateway), turn a prompt into an MP4 with
# `mochi generate`, stop the stack, and print where the MP4 is.
#
#   scripts/demo.sh ["prompt"] [extra `mochi generate` flags, e.g. --frames 61 --fps 24]
#
# The stack runs the embedded tiny Mochi model (random weights: the video is noise) on the
# CPU. Without extra flags the demo asks for a small job so that it finishes in about half a
# minute; with flags, exactly what they say.
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-a red fox running through fresh snow at dawn}"
shift || true
if [ "$#" -eq 0 ]; then
  set -- --width 480 --height 272 --frames 31 --steps 16
  echo "demo: asking for 480x272, 31 frames, 16 steps (pass mochi generate flags to change it)" >&2
fi

scripts/install-deps.sh
cargo build --bin mochi
mochi="${CARGO_TARGET_DIR:-$PWD/target}/debug/mochi"
mkdir -p out
data_dir="${MOCHI_DATA_DIR:-$PWD/data}"

# Start the stack on a free port; `mochi up` prints its URL on stdout when ready.
: > out/up.url
"$mochi" up --listen 127.0.0.1:0 --data-dir "$data_dir" --nats-server "$PWD/.venv/bin/nats-server" \
  > out/up.url 2> out/up.log &
up_pid=$!
stop_stack() {
  if kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    wait "$up_pid" || true
  fi
}
trap stop_stack EXIT

for _ in $(seq 1 300); do
  [ -s out/up.url ] && break
  if ! kill -0 "$up_pid" 2>/dev/null; then
    echo "demo: mochi up exited; its log:" >&2
    cat out/up.log >&2
    exit 1
  fi
  sleep 0.2
done
url="$(head -n1 out/up.url)"
[ -n "$url" ] || { echo "demo: mochi up did not start; see out/up.log" >&2; exit 1; }
echo "demo: stack up at $url" >&2

output="$PWD/out/demo.mp4"
"$mochi" generate "$prompt" --server "$url" --data-dir "$data_dir" -o "$output" "$@"
stop_stack
trap - EXIT

if command -v ffprobe >/dev/null 2>&1; then
  ffprobe -v error -select_streams v:0 -count_frames \
    -show_entries stream=codec_name,width,height,r_frame_rate,nb_read_frames -of default=nw=1 "$output" >&2
fi
echo "MP4 written to: $output"
