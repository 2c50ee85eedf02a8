#!/usr/bin/env bash
# Renders the Kubernetes overlays and checks each: the Kubernetes schemas
# (kubernetes-validate --strict, Kubernetes 1.32), checkov (zero findings; every skip is
# justified in a comment beside it) and k8s/check.py (the pieces fit each other and the
# design: NATS users and passwords, replicas, routes, probes, budgets, network policies;
# the rendered NATS configuration parsed by nats-server itself).
#   scripts/k8s-check.sh [--mochi PATH] [--out DIR]                 every overlay
#   scripts/k8s-check.sh [--mochi PATH] --rendered FILE --overlay N  one rendered file
# Needs kubectl and .venv-k8s (scripts/install-deps.sh). --mochi is the binary whose
# `mochi nats config --gpu-node …` (for the overlay's GPU nodes) the NATS users must equal
# (default: target/debug/mochi, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.32.0
mochi=""
out=target/k8s
rendered=""
overlay=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mochi) mochi="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --rendered) rendered="$2"; shift 2 ;;
    --overlay) overlay="$2"; shift 2 ;;
    *) echo "k8s-check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
venv=.venv-k8s/bin
[ -x "$venv/checkov" ] && [ -x "$venv/kubernetes-validate" ] \
  || { echo "k8s-check.sh: $venv lacks checkov or kubernetes-validate: run scripts/install-deps.sh" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "k8s-check.sh: kubectl is not installed" >&2; exit 1; }
if [ -z "$mochi" ]; then
  mochi=target/debug/mochi
  [ -x "$mochi" ] || cargo build --quiet --bin mochi
fi
nats_server="${MOCHI_NATS_SERVER:-.venv/bin/nats-server}"
[ -x "$nats_server" ] || { echo "k8s-check.sh: $nats_server missing: run scripts/install-deps.sh" >&2; exit 1; }
mkdir -p "$out"
# Stands in for the mochi-nats-cluster secret (a fixed password: it never leaves this check).
MOCHI_NATS_ROUTE_PASSWORD=Checkroutepassword0123456789 "$mochi" nats cluster \
  --route nats-0.nats:6222 --route nats-1.nats:6222 --route nats-2.nats:6222 > "$out/nats-cluster.conf"

check() { # FILE OVERLAY
  local file="$1" name="$2" status=0
  "$venv/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$file" || status=1
  "$venv/checkov" --quiet --compact --framework kubernetes -f "$file" > "$out/$name.checkov.txt" 2>&1 \
    || { cat "$out/$name.checkov.txt"; status=1; }
  "$venv/python" k8s/check.py "$file" --overlay "$name" --mochi "$mochi" \
    --nats-cluster "$out/nats-cluster.conf" --nats-server "$nats_server" --podmonitor monitoring/podmonitor.yaml || status=1
  return $status
}

if [ -n "$rendered" ]; then
  check "$rendered" "$overlay"
  exit
fi
status=0
for dir in k8s/overlays/*/; do
  name=$(basename "$dir")
  kubectl kustomize "$dir" > "$out/$name.yaml"
  if check "$out/$name.yaml" "$name"; then
    echo "k8s-check: $name: schemas, checkov and check.py pass ($(grep -c '^kind:' "$out/$name.yaml") objects)"
  else
    echo "k8s-check: $name: FAILED" >&2
    status=1
  fi
done
exit $status
