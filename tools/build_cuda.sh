#!/usr/bin/env bash
# Builds gpu-node's CUDA variant on a machine without a GPU (or a CUDA install), from
# PyPI's CUDA 13.0 wheels, for H100/H200 (sm_90). Route: shared/docs/platform-notes.md,
# "Building the CUDA variant without a GPU".
#
#   tools/build_cuda.sh [cargo build args...]
#   (default: --release -p mochi-model --example dit_bench --features cuda)
#
# Environment (all optional):
#   CUDA_VENV       venv holding the CUDA wheels        (default <repo>/.venv-cuda)
#   CUDA_TOOLKIT    assembled toolkit root               (default <repo>/target/cuda-toolkit)
#   CUDA_TARGET_DIR cargo target dir for the CUDA build  (default <repo>/target/cuda)
#   CUDA_COMPUTE_CAP                                     (default 90)
# On the GPU machine run the binary with LD_LIBRARY_PATH pointing at a CUDA 13 runtime
# (e.g. the `nvidia/cu13/lib` folder of a PyTorch environment, or the carried
# $CUDA_TOOLKIT/lib64 without its stubs/).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CUDA_VENV=${CUDA_VENV:-$REPO/.venv-cuda}
CUDA_TOOLKIT=${CUDA_TOOLKIT:-$REPO/target/cuda-toolkit}
CUDA_TARGET_DIR=${CUDA_TARGET_DIR:-$REPO/target/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

# 1. The wheels. 13.0.x: nvcc 13.1+ emits PTX that driver 580 cannot load.
if [ ! -x "$CUDA_VENV/bin/python" ]; then
    python3 -m venv "$CUDA_VENV"
fi
if ! "$CUDA_VENV/bin/pip" show cuda-toolkit 2>/dev/null | grep -q '^Version: 13.0.2'; then
    "$CUDA_VENV/bin/pip" install -q "cuda-toolkit[cublas,cudart,curand,nvrtc,nvcc,cccl,crt,nvvm]==13.0.2"
fi
CU13=$("$CUDA_VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')

# 2. A toolkit root: bin/include/nvvm links, lib64 with unversioned library names.
mkdir -p "$CUDA_TOOLKIT/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$CU13/$d" "$CUDA_TOOLKIT/$d"; done
for lib in "$CU13"/lib/*.so*; do
    name=$(basename "$lib")
    ln -sf "$lib" "$CUDA_TOOLKIT/lib64/$name"
    ln -sf "$lib" "$CUDA_TOOLKIT/lib64/${name%%.so*}.so"
done
ln -sfn lib64 "$CUDA_TOOLKIT/lib"

# 3. A link-time libcuda.so stub (the driver's real libcuda.so.1 is used at run time):
#    every cu* entry point cudarc declares, each returning an error code.
cargo fetch --manifest-path "$REPO/Cargo.toml" >/dev/null
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort | tail -1)
STUB_C="$CUDA_TOOLKIT/lib64/stubs/libcuda_stub.c"
grep -ohE 'pub (unsafe )?fn cu[A-Za-z0-9_]+' "$CUDARC/src/driver/sys/"*.rs | sed -E 's/.*fn //' | sort -u |
    awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$STUB_C"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_TOOLKIT/lib64/stubs/libcuda.so" "$STUB_C"
ln -sf stubs/libcuda.so "$CUDA_TOOLKIT/lib64/libcuda.so"

# 4. Build, in its own target dir so CPU builds are not invalidated.
export CUDA_ROOT="$CUDA_TOOLKIT" CUDA_PATH="$CUDA_TOOLKIT" CUDA_HOME="$CUDA_TOOLKIT"
export PATH="$CUDA_TOOLKIT/bin:$PATH"
export LIBRARY_PATH="$CUDA_TOOLKIT/lib64:$CUDA_TOOLKIT/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
export CARGO_TARGET_DIR="$CUDA_TARGET_DIR"
if [ "$#" -eq 0 ]; then
    set -- --release -p mochi-model --example dit_bench --features cuda
fi
cd "$REPO"
cargo build "$@"
echo "built into $CUDA_TARGET_DIR (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
