#!/usr/bin/env bash
# Build the images of the recipes (`make base-image`, `make image`, `make postgres-image`):
#
#   docker/image.sh base       print the base image to build FROM (building it if need be)
#   docker/image.sh image      build $S2AP_IMAGE (default s2ap:latest) from docker/Dockerfile
#   docker/image.sh postgres   print the PostgreSQL image for compose (building it if need be)
#
# Base image: $BASE_IMAGE if set; else the official python:3.11-slim-trixie when it is present or
# can be pulled; else s2ap-local/python:3.11-bookworm, made from Debian's packages by
# docker/base/build.sh (machines without Docker Hub). PostgreSQL: the official postgres:17 when
# present or pullable, else s2ap-local/postgres:15-bookworm from docker/postgres/Dockerfile on that
# local base (Debian bookworm's PostgreSQL 15; compose picks it with POSTGRES_IMAGE).
#
# Package sources of the build: PyPI, plus the local package mirrors the host's pip is configured
# with (file:// indexes and find-links folders in `pip config list`), served read-only over HTTP
# on 127.0.0.1:$S2AP_MIRROR_PORT for the duration of the build, as extra indexes and find-links
# beside PyPI, so pip can take torch's CUDA wheels (~3 GB) from the local disk
# (S2AP_BUILD_MIRRORS=0 turns this off; then everything comes from PyPI). The host's CA bundle
# ($S2AP_BUILD_CA_BUNDLE, default /etc/ssl/certs/ca-certificates.crt: it holds the CA of a
# TLS-intercepting proxy where there is one) is served the same way and fetched by pip inside the
# build step that uses it, never copied into a layer. The build runs on the host network
# (--network host): that is how it reaches 127.0.0.1 and, with dockerd --iptables=false, the
# internet. Build arguments stay the same from one build to the next (fixed port), so unchanged
# layers come from the cache. Other build arguments: TORCH_VARIANT (pypi, cpu, cu130, ...),
# TORCH_INDEX_URL (see docker/Dockerfile). S2AP_NO_CACHE=1: build every layer again (a cold build).
set -euo pipefail
cd "$(dirname "$0")/.."

image=${S2AP_IMAGE:-s2ap:latest}
official_base=python:3.11-slim-trixie
local_base=s2ap-local/python:3.11-bookworm
official_postgres=postgres:17
local_postgres=s2ap-local/postgres:15-bookworm
mirror_port=${S2AP_MIRROR_PORT:-38917}
ca_bundle=${S2AP_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

say() { echo "docker/image.sh: $*" >&2; }
die() {
  say "$*"
  exit 1
}

# The classic builder when BuildKit's buildx is missing (Debian bookworm's docker.io).
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
pullable() { # pullable IMAGE: present, or pulled within a minute
  have_image "$1" && return 0
  say "trying to pull $1"
  timeout 60 docker pull -q "$1" >/dev/null 2>&1
}

base_image() {
  if [ -n "${BASE_IMAGE:-}" ]; then
    have_image "$BASE_IMAGE" || docker pull -q "$BASE_IMAGE" >/dev/null ||
      die "BASE_IMAGE=$BASE_IMAGE: neither present nor pullable"
    echo "$BASE_IMAGE"
  elif pullable "$official_base"; then
    echo "$official_base"
  else
    if ! have_image "$local_base"; then
      say "$official_base cannot be pulled: building $local_base from Debian's packages"
      command -v debootstrap >/dev/null || docker/host.sh debootstrap >&2
      docker/base/build.sh "$local_base" >&2
    fi
    echo "$local_base"
  fi
}

postgres_image() {
  if [ -n "${POSTGRES_IMAGE:-}" ]; then
    echo "$POSTGRES_IMAGE"
  elif pullable "$official_postgres"; then
    echo "$official_postgres"
  else
    if ! have_image "$local_postgres"; then
      local base
      base=$(base_image)
      say "$official_postgres cannot be pulled: building $local_postgres (FROM $base)"
      docker build --network host -q -t "$local_postgres" --build-arg BASE_IMAGE="$base" \
        -f docker/postgres/Dockerfile docker/postgres >&2
    fi
    echo "$local_postgres"
  fi
}

# ---- the build host's package mirrors, over HTTP on 127.0.0.1 -----------------------------------
serve_dir=""
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  if [ -n "$serve_dir" ]; then rm -rf "$serve_dir"; fi
}
trap stop_server EXIT

# Lines "index DIR" and "links DIR": the local file:// indexes and find-links folders of the
# host's pip configuration (pip config list, PIP_* variables).
local_pip_sources() {
  python3 - <<'PY'
import os, shlex, subprocess, sys
values = {}
try:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, timeout=60).stdout
except Exception:
    out = ""
for line in out.splitlines():
    key, _, value = line.partition("=")
    name = key.rsplit(".", 1)[-1]
    values.setdefault(name, []).extend(shlex.split(value.strip().strip("'\"")))
for name in ("index-url", "extra-index-url", "find-links"):
    env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if env:
        values.setdefault(name, []).extend(env.split())
seen = set()
for name in ("index-url", "extra-index-url", "find-links"):
    for value in values.get(name, []):
        path = value[len("file://"):] if value.startswith("file://") else value
        if not path.startswith("/") or not os.path.isdir(path) or path in seen:
            continue
        seen.add(path)
        print("links" if name == "find-links" else "index", os.path.abspath(path))
PY
}

start_mirror() { # sets build_args
  build_args=()
  local url="http://127.0.0.1:$mirror_port" indexes=() links=() n=0 kind dir
  if ! command -v python3 >/dev/null; then
    say "no python3 on this host: no local mirror, pip in the build uses PyPI and its own CAs"
    return 0
  fi
  serve_dir=$(mktemp -d /tmp/s2ap-mirror.XXXXXX)
  if [ "${S2AP_BUILD_MIRRORS:-1}" != 0 ]; then
    while read -r kind dir; do
      n=$((n + 1))
      if [ "$kind" = index ]; then
        # Serve the index's parent: simple indexes link to their files with ../../files/...
        ln -s "$(dirname "$dir")" "$serve_dir/m$n"
        indexes+=("$url/m$n/$(basename "$dir")")
      else
        ln -s "$dir" "$serve_dir/m$n"
        links+=("$url/m$n/")
      fi
    done < <(local_pip_sources)
  fi
  if [ -f "$ca_bundle" ]; then
    cp "$ca_bundle" "$serve_dir/ca.pem"
    build_args+=(--build-arg "CA_BUNDLE_URL=$url/ca.pem")
  fi
  if [ ${#indexes[@]} -eq 0 ] && [ ${#links[@]} -eq 0 ] && [ ! -f "$serve_dir/ca.pem" ]; then
    return 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$mirror_port") 2>/dev/null; then
    die "port $mirror_port is in use: set S2AP_MIRROR_PORT to a free port"
  fi
  python3 -m http.server --bind 127.0.0.1 --directory "$serve_dir" "$mirror_port" \
    >"$serve_dir.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$mirror_port") 2>/dev/null && break
    sleep 0.2
  done
  # Besides pip's default index (PyPI): pip takes each file from whichever source offers the
  # best match, so what the mirrors hold mostly comes from the local disk.
  if [ ${#indexes[@]} -gt 0 ]; then build_args+=(--build-arg "EXTRA_INDEX_URL=${indexes[*]}"); fi
  if [ ${#links[@]} -gt 0 ]; then build_args+=(--build-arg "FIND_LINKS=${links[*]}"); fi
  build_args+=(--build-arg "TRUSTED_HOST=127.0.0.1")
  say "package sources: local mirrors ${indexes[*]} ${links[*]} (served by PID $server_pid), then PyPI"
}

build_image() {
  local base start elapsed size previous
  base=$(base_image)
  start_mirror
  for arg in TORCH_VARIANT TORCH_INDEX_URL; do
    if [ -n "${!arg:-}" ]; then build_args+=(--build-arg "$arg=${!arg}"); fi
  done
  say "building $image FROM $base (DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-default})"
  previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  start=$(date +%s)
  if [ "${S2AP_NO_CACHE:-0}" != 0 ]; then build_args+=(--no-cache); fi # a cold build, timed
  docker build --network host -f docker/Dockerfile -t "$image" \
    --build-arg BASE_IMAGE="$base" "${build_args[@]}" .
  elapsed=$(($(date +%s) - start))
  size=$(docker image inspect -f '{{.Size}}' "$image")
  docker run --rm --network none "$image" s2ap --help >/dev/null
  # The image this build replaced: removed when nothing else uses it (disk: it can be GBs).
  if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
  fi
  say "built $image in ${elapsed} s; size $((size / 1000000)) MB; \`docker run $image s2ap --help\` works"
}

case "${1:-image}" in
  base) base_image ;;
  image) build_image ;;
  postgres) postgres_image ;;
  *) die "usage: docker/image.sh base|image|postgres" ;;
esac
