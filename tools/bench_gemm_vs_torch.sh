#!/usr/bin/env bash
# f32 CPU GEMM alone, PyTorch and candle (release) side by side, 2 threads each, on the
# mid-size DiT's shapes (mochi-model/examples/gemm_bench.rs): separates GEMM speed
# from the rest of the forward that tools/bench_dit_vs_torch.sh times.
#
#   tools/bench_gemm_vs_torch.sh [ROUNDS]        # needs .venv-ref (tools/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
py=.venv-ref/bin/python
[ -x "$py" ] || { echo "no $py: create the reference environment (tools/README.md)" >&2; exit 1; }
cargo build --release -p mochi-model --example gemm_bench >&2
torch_runs=()
candle_runs=()
for _ in $(seq "$rounds"); do
  torch_runs+=("$("$py" - <<'PY'
import time, torch
torch.set_num_threads(2)
total = 0.0
for m, k, n in [(130, 4096, 8192), (128, 768, 4608), (2, 1536, 6144), (512, 1536, 4608),
                (512, 1536, 8192), (512, 4096, 1536), (512, 1536, 1536)]:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    times = []
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        times.append((time.perf_counter() - start) * 1e3)
    total += sorted(times)[5]
print(f"{total:.2f}")
PY
)")
  candle_runs+=("$(RAYON_NUM_THREADS=2 target/release/examples/gemm_bench 10 | sed -n 's/candle total median \([0-9.]*\) ms/\1/p')")
done
middle() { printf '%s\n' "$@" | sort -g | sed -n "$(( (rounds + 1) / 2 ))p"; }
torch_ms=$(middle "${torch_runs[@]}")
candle_ms=$(middle "${candle_runs[@]}")
echo "gemm (7 shapes, sum of medians): pytorch ${torch_runs[*]} ms, candle ${candle_runs[*]} ms; medians ${torch_ms} / ${candle_ms} ms; candle/pytorch $(awk -v c="$candle_ms" -v t="$torch_ms" 'BEGIN { printf "%.2f", c / t }')x"
