#!/usr/bin/env bash
# One AsymmDiT forward (CFG batch of two), PyTorch/diffusers and candle side by side in one
# run, on the same random weights, 2 threads each, alternating (PyTorch, candle, PyTorch,
# candle) so that a noisy machine shifts both; prints each median and the ratio.
#
#   tools/bench_dit_vs_torch.sh [ROUNDS]        # needs .venv-ref (tools/README.md)
#   CANDLE_BASELINE=/path/to/old/dit_bench tools/bench_dit_vs_torch.sh [ROUNDS]
#
# candle is the release build (the build that ships): it is built first if needed. With
# CANDLE_BASELINE (a dit_bench built from another commit), that binary runs in every round
# too, so a change is measured against its baseline in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
py=.venv-ref/bin/python
[ -x "$py" ] || { echo "no $py: create the reference environment (tools/README.md)" >&2; exit 1; }
cargo build --release -p mochi-model --example dit_bench >&2
bench=target/release/examples/dit_bench
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# name | bench_dit.py arguments | dit_bench arguments after the model dir (frames h w text reps)
configs=(
  "tiny|--reps 20|3 8 8 16 20"
  "mid|--layers 4 --heads 12 --head-dim 128 --text-dim 768 --t5-dim 4096 --frames 2 --height 16 --width 32 --text-tokens 64 --reps 3|2 16 32 64 3"
)

median_ms() { sed -n 's/.*median \([0-9.]*\) ms.*/\1/p' | tail -1; }

for config in "${configs[@]}"; do
  IFS='|' read -r name torch_args candle_args <<<"$config"
  # shellcheck disable=SC2086
  "$py" tools/bench_dit.py "$work/$name" --threads 2 $torch_args >/dev/null 2>&1
  torch_runs=()
  candle_runs=()
  baseline_runs=()
  for _ in $(seq "$rounds"); do
    # shellcheck disable=SC2086
    torch_runs+=("$("$py" tools/bench_dit.py "$work/$name" --threads 2 $torch_args 2>/dev/null | median_ms)")
    # shellcheck disable=SC2086
    candle_runs+=("$(RAYON_NUM_THREADS=2 "$bench" "$work/$name" $candle_args 2>&1 | median_ms)")
    if [ -n "${CANDLE_BASELINE:-}" ]; then
      # shellcheck disable=SC2086
      baseline_runs+=("$(RAYON_NUM_THREADS=2 "$CANDLE_BASELINE" "$work/$name" $candle_args 2>&1 | median_ms)")
    fi
  done
  middle() { printf '%s\n' "$@" | sort -g | sed -n "$(( (rounds + 1) / 2 ))p"; }
  torch_ms=$(middle "${torch_runs[@]}")
  candle_ms=$(middle "${candle_runs[@]}")
  ratio=$(awk -v c="$candle_ms" -v t="$torch_ms" 'BEGIN { printf "%.2f", c / t }')
  echo "$name: pytorch ${torch_runs[*]} ms, candle (release, f32) ${candle_runs[*]} ms; medians ${torch_ms} / ${candle_ms} ms; candle/pytorch ${ratio}x"
  if [ -n "${CANDLE_BASELINE:-}" ]; then
    baseline_ms=$(middle "${baseline_runs[@]}")
    echo "$name: baseline ${baseline_runs[*]} ms; median ${baseline_ms} ms; baseline/pytorch $(awk -v c="$baseline_ms" -v t="$torch_ms" 'BEGIN { printf "%.2f", c / t }')x; candle/baseline $(awk -v c="$candle_ms" -v b="$baseline_ms" 'BEGIN { printf "%.2f", c / b }')x"
  fi
done
