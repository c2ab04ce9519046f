#!/usr/bin/env bash
# A Python 3.11 base image made from Debian's packages, for machines that cannot pull the official
# python image (no Docker Hub). docker/Dockerfile and docker/postgres/Dockerfile build FROM it
# with `--build-arg BASE_IMAGE=<tag>`; `make base-image` / `make image` call this script when
# the official image cannot be pulled.
#
#   docker/base/build.sh [TAG]            default TAG: s2ap-local/python:3.11-bookworm
#
# debootstrap (Debian's package) writes a minimal bookworm root file system with Debian's
# python3.11 (+ venv) and the CA certificates; `docker import` turns it into a one-layer image
# (about 1 minute and 156 MB here). Needs root, debootstrap and a reachable Debian mirror
# (DEBIAN_MIRROR; default: debootstrap's own).
set -euo pipefail

tag=${1:-s2ap-local/python:3.11-bookworm}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-}

if [ "$(id -u)" -ne 0 ]; then
  echo "docker/base/build.sh: debootstrap needs root (run it with sudo)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "docker/base/build.sh: debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
}

rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/s2ap-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap $suite into $rootfs${mirror:+ from $mirror}"
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
  "$suite" "$rootfs" ${mirror:+"$mirror"} >"$rootfs.log" 2>&1 || {
  tail -30 "$rootfs.log" >&2
  rm -f "$rootfs.log"
  exit 1
}
rm -f "$rootfs.log"

# What the official image offers and the recipes call: `python` and `python3`.
ln -sf python3.11 "$rootfs/usr/bin/python"
# No package cache, no apt lists (images that need packages run `apt-get update` themselves).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap $suite (minbase) + python3.11, python3.11-venv, python3-distutils, ca-certificates" \
  - "$tag" >/dev/null
docker run --rm --network none "$tag" python -c 'import sys, venv, ssl; print("base image", sys.version.split()[0])'
echo "built $tag"
