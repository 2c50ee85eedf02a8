#!/usr/bin/env bash
# Builds the `mochi` container image (see Dockerfile) and prints its tag as the last line.
#   scripts/image.sh [--cuda] [--binary PATH] [--tag TAG]
# Without --binary it builds the release binary first. --cuda builds the Dockerfile's `cuda`
# target instead: the binary with `--features cuda` (tools/build_cuda.sh, from PyPI's CUDA
# 13.0 wheels; ~1 GB of wheels and a long build on 2 cores), and the CUDA runtime libraries
# it links (libcudart, libcublas, libcublasLt, libcurand) from those wheels; the driver's
# libcuda.so.1 is left to the host. The image holds the binary (debug
# information stripped), the shared libraries ldd names for it, nats-server from .venv (or
# MOCHI_NATS_SERVER), the CA certificates, /tmp, /data and an /etc/passwd naming the
# non-root user 65532.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
tag=""
target=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --cuda) target=cuda; shift ;;
    *) echo "image.sh: unknown argument $1 (use --cuda, --binary PATH, --tag TAG)" >&2; exit 2 ;;
  esac
done

cuda_toolkit=$(realpath -m "${CUDA_TOOLKIT:-target/cuda-toolkit}")
if [ -z "$binary" ]; then
  if [ "$target" = cuda ]; then
    tools/build_cuda.sh --release --bin mochi --features cuda >&2
    binary="${CUDA_TARGET_DIR:-target/cuda}/release/mochi"
  else
    cargo build --release --bin mochi >&2
    binary=target/release/mochi
  fi
fi
nats_server="${MOCHI_NATS_SERVER:-.venv/bin/nats-server}"
[ -x "$nats_server" ] || { echo "image.sh: $nats_server missing: run scripts/install-deps.sh" >&2; exit 1; }
command -v docker >/dev/null || { echo "image.sh: docker is not installed" >&2; exit 1; }

# `mochi 0.1.0 (commit 0123abcd4567)`. A CUDA build needs a libcuda.so.1 to start at all:
# the toolkit's link stub stands in for the driver's here (--version touches no device).
if [ "$target" = cuda ]; then
  driver_stub=$(mktemp -d)
  trap 'rm -rf "$driver_stub"' EXIT
  ln -s "$(realpath "$cuda_toolkit/lib64/stubs/libcuda.so")" "$driver_stub/libcuda.so.1"
  version_line=$(LD_LIBRARY_PATH="$driver_stub:$cuda_toolkit/lib64" "$binary" --version)
else
  version_line=$("$binary" --version)
fi
version=$(echo "$version_line" | awk '{print $2}')
commit=$(echo "$version_line" | sed -n 's/.*(commit \(.*\))$/\1/p')
if [ "$target" = cuda ]; then
  tag="${tag:-mochi:${version}-cuda}"
else
  tag="${tag:-mochi:${version}}"
fi

stage=target/image
rm -rf "$stage"
mkdir -p "$stage/rootfs/usr/local/bin" "$stage/rootfs/etc" "$stage/rootfs/tmp" "$stage/data" "$stage/cuda"
chmod 1777 "$stage/rootfs/tmp"
cp "$binary" "$stage/rootfs/usr/local/bin/mochi"
strip --strip-debug "$stage/rootfs/usr/local/bin/mochi"
cp "$nats_server" "$stage/rootfs/usr/local/bin/nats-server"
# The dynamic loader and every library the binary links, at the paths the loader expects;
# for the CUDA build, the CUDA runtime libraries (resolved in the toolkit build_cuda.sh
# assembled) go to cuda/ (/usr/local/cuda/lib64 in the image), and libcuda.so.1 (the
# driver's) is not copied.
libs=$(LD_LIBRARY_PATH="$cuda_toolkit/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$binary" \
  | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3} $1 ~ /^\// {print $1, $1}')
while read -r name path; do
  case "$name" in
    libcuda.so*) ;;
    libcudart.so*|libcublas.so*|libcublasLt.so*|libcurand.so*|libnvrtc*|libnvJitLink*)
      [ "$target" = cuda ] || { echo "image.sh: $binary links $name: build the cuda target (--cuda)" >&2; exit 1; }
      cp -L "$path" "$stage/cuda/$name" ;;
    *) cp -L --parents "$path" "$stage/rootfs" ;;
  esac
done <<< "$libs"
if [ "$target" = cuda ] && [ -z "$(ls "$stage/cuda")" ]; then
  echo "image.sh: $binary links no CUDA library: was it built with --features cuda?" >&2
  exit 1
fi
# The CA certificates of this machine, for the gateway's HTTPS fetches (the OIDC JWKS):
# rustls-native-certs reads /etc/ssl/certs/ca-certificates.crt.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$stage/rootfs/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$stage/rootfs/etc/ssl/certs/"
fi
printf 'root:x:0:0::/:/nonexistent\nmochi:x:65532:65532::/data:/nonexistent\n' > "$stage/rootfs/etc/passwd"
printf 'root:x:0:\nmochi:x:65532:\n' > "$stage/rootfs/etc/group"

docker build --quiet -f Dockerfile --target "$target" \
  --build-arg "VERSION=${version}" --build-arg "COMMIT=${commit}" \
  -t "$tag" "$stage" >&2
echo "$tag"
