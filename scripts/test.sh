#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then lints,
# type-checks and runs pytest. Extra arguments go to pytest (e.g. -m "not orthanc").
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: a real Orthanc with its DICOMweb plugin for the integration tests,
# nginx for the deployment tests, and Chromium for the browser tests.
missing=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* \
  >/dev/null 2>&1 || missing+=(orthanc-dicomweb)
command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
# nginx in front of replicas for the deployment tests (tests/deploy, scripts/stack.sh).
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# A real headless browser for the page tests (driven by Playwright).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# npm fetches OHIF and fhirclient for the apps tests (scripts/smart-apps.sh).
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# PostgreSQL: these machines run one on 127.0.0.1:5432 (trust auth, database "test").
export GATEWAY_TEST_POSTGRES_URL="${GATEWAY_TEST_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/test}"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "==> starting the local PostgreSQL cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  else
    echo "==> installing PostgreSQL"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# Python environment.
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
echo "==> installing the gateway and its test tools"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'

echo "==> OHIF and fhirclient (npm, pinned in smart_apps/package-lock.json)"
scripts/smart-apps.sh

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> import contracts"
.venv/bin/lint-imports --no-cache
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
