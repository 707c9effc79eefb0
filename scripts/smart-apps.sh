#!/usr/bin/env bash
# Fetch the SMART apps' npm packages (OHIF Viewer, fhirclient) into smart_apps/node_modules,
# at the versions pinned in smart_apps/package-lock.json, each tarball checked against its
# sha512 integrity there (npm ci). Nothing is built and no install script runs: OHIF's
# package ships its built viewer in dist/, fhirclient its browser build.
# Idempotent: skipped when what is installed was installed from this very lock file.
set -euo pipefail
cd "$(dirname "$0")/../smart_apps"
stamp=node_modules/.gateway-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && [ -f node_modules/@ohif/app/dist/index.html ] \
  && [ -f node_modules/fhirclient/build/fhir-client.min.js ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing (Debian package npm): OHIF and the launch page are not installed" >&2
  exit 1
fi
echo "==> fetching OHIF and fhirclient from npm (smart_apps/package-lock.json)"
# The lock lists the two packages alone: the viewer is prebuilt, so its build-time
# dependencies are not needed (and not fetched).
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"
