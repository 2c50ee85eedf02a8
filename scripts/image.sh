#!/usr/bin/env bash
# Builds the `mochi` container image (see Dockerfile) and prints its tag as the last line.
#   scripts/image.sh [--binary PATH] [--tag TAG]
# Without --binary it builds the release binary first. The image holds the binary (debug
# information stripped), the shared libraries ldd names for it, nats-server from .venv (or
# MOCHI_NATS_SERVER), the CA certificates, /tmp, /data and an /etc/passwd naming the
# non-root user 65532.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "image.sh: unknown argument $1 (use --binary PATH, --tag TAG)" >&2; exit 2 ;;
  esac
done

if [ -z "$binary" ]; then
  cargo build --release --bin mochi >&2
  binary=target/release/mochi
fi
nats_server="${MOCHI_NATS_SERVER:-.venv/bin/nats-server}"
[ -x "$nats_server" ] || { echo "image.sh: $nats_server missing: run scripts/install-deps.sh" >&2; exit 1; }
command -v docker >/dev/null || { echo "image.sh: docker is not installed" >&2; exit 1; }

# `mochi 0.1.0 (commit 0123abcd4567)`
version_line=$("$binary" --version)
version=$(echo "$version_line" | awk '{print $2}')
commit=$(echo "$version_line" | sed -n 's/.*(commit \(.*\))$/\1/p')
tag="${tag:-mochi:${version}}"

stage=target/image
rm -rf "$stage"
mkdir -p "$stage/rootfs/usr/local/bin" "$stage/rootfs/etc" "$stage/rootfs/tmp" "$stage/data"
chmod 1777 "$stage/rootfs/tmp"
cp "$binary" "$stage/rootfs/usr/local/bin/mochi"
strip --strip-debug "$stage/rootfs/usr/local/bin/mochi"
cp "$nats_server" "$stage/rootfs/usr/local/bin/nats-server"
# The dynamic loader and every library the binary links, at the paths the loader expects.
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  cp -L --parents "$lib" "$stage/rootfs"
done
# The CA certificates of this machine, for the gateway's HTTPS fetches (the OIDC JWKS):
# rustls-native-certs reads /etc/ssl/certs/ca-certificates.crt.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$stage/rootfs/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$stage/rootfs/etc/ssl/certs/"
fi
printf 'root:x:0:0::/:/nonexistent\nmochi:x:65532:65532::/data:/nonexistent\n' > "$stage/rootfs/etc/passwd"
printf 'root:x:0:\nmochi:x:65532:\n' > "$stage/rootfs/etc/group"

docker build --quiet -f Dockerfile \
  --build-arg "VERSION=${version}" --build-arg "COMMIT=${commit}" \
  -t "$tag" "$stage" >&2
echo "$tag"
