#!/usr/bin/env bash
# The production topology on this machine, from Debian packages, on loopback:
# nginx (deploy/nginx.conf, its own prefix, not the system service) in front of
# two `gateway serve` replicas with GATEWAY_OFFLOAD=nginx on a throwaway
# PostgreSQL database (127.0.0.1:5432), in front of a private Orthanc with its
# DICOMweb plugin. See docs/deployment.md.
#
#   scripts/stack.sh start [--replicas N] [--offload nginx|off] [--dicomweb-url URL] [--database-url URL]
#   scripts/stack.sh status
#   scripts/stack.sh stop
#
# State and logs go to var/stack (STACK_DIR overrides it).
set -euo pipefail
cd "$(dirname "$0")/.."

command="${1:-}"
case "$command" in
  start|stop|status) shift ;;
  *) echo "usage: $0 start|stop|status [options]" >&2; exit 2 ;;
esac

if [ ! -x .venv/bin/python ]; then
  echo "no .venv: run ./scripts/test.sh or ./scripts/demo.sh once first" >&2
  exit 2
fi
if [ "$command" = start ]; then
  for tool in nginx Orthanc pg_isready; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
      echo "$tool is missing: apt-get install nginx orthanc orthanc-dicomweb postgresql-client" >&2
      exit 2
    }
  done
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not up on 127.0.0.1:5432" >&2; exit 2; }
fi
exec .venv/bin/python -m tests.support.stack "$command" --dir "${STACK_DIR:-var/stack}" "$@"
