#!/bin/sh
# `pip install "$@"` inside a docker/Dockerfile build step, with the package sources that the
# build arguments name (all optional; the defaults install from PyPI only):
#
#   INDEX_URL        the package index (default: pip's own, PyPI)
#   EXTRA_INDEX_URL  further indexes, space-separated
#   FIND_LINKS       wheel folders/pages, space-separated; pip takes a file from them before an
#                    index when both hold the same version (e.g. a mirror on the build host)
#   TRUSTED_HOST     hosts pip may reach over plain http, space-separated (such a mirror)
#   CA_BUNDLE_URL    a CA bundle to trust, e.g. that of a TLS-intercepting proxy, served by the
#                    build host (http://127.0.0.1:PORT/ca.pem, the build on the host network).
#                    It is downloaded into a temporary file and deleted before this step ends,
#                    so no image layer keeps it (the classic builder has no build secrets).
set -eu

set -- --no-cache-dir "$@"
if [ -n "${INDEX_URL:-}" ]; then set -- --index-url "$INDEX_URL" "$@"; fi
for url in ${EXTRA_INDEX_URL:-}; do set -- --extra-index-url "$url" "$@"; done
for url in ${FIND_LINKS:-}; do set -- --find-links "$url" "$@"; done
for host in ${TRUSTED_HOST:-}; do set -- --trusted-host "$host" "$@"; done

ca=""
cleanup() { if [ -n "$ca" ]; then rm -f "$ca"; fi; }
trap cleanup EXIT
if [ -n "${CA_BUNDLE_URL:-}" ]; then
  ca=$(mktemp)
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
    "$CA_BUNDLE_URL" "$ca"
  set -- --cert "$ca" "$@"
fi

python3 -m pip install "$@"
