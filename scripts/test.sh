#!/usr/bin/env bash
# Runs every test of the workspace (unit, property, integration against real nats-server
# processes, model goldens) on the CPU. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$PWD/.venv/bin:$PATH"
export MOCHI_NATS_SERVER="$PWD/.venv/bin/nats-server"
cargo test --workspace "$@"
