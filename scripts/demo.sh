#!/usr/bin/env bash
# Start the gateway with demo data on the embedded defaults (a folder of DICOM
# files and SQLite in ./var), with OHIF at /apps/ohif/. Extra arguments go to `gateway demo`, e.g. --port 9000.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
# OHIF and its SMART launch page (npm, pinned and integrity-checked); the demo still
# runs without them, only without the viewer.
scripts/smart-apps.sh || echo "warning: OHIF not installed; the demo runs without the viewer" >&2
exec .venv/bin/gateway demo "$@"
