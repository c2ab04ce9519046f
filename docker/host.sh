#!/usr/bin/env bash
# Make this machine able to build and run the s2ap containers (`make docker-host`; `make image`
# and `make test-cluster` call it first):
#
#   docker/host.sh            docker CLI + daemon + docker-compose; start dockerd if none answers
#   docker/host.sh debootstrap   also debootstrap (docker/base/build.sh needs it)
#
# What it installs, only when missing: Debian's docker.io (dockerd 20.10), docker-compose (v1,
# 1.29: the compose v2 plugin is not in Debian bookworm) and debootstrap, with apt-get. When no
# daemon answers and systemd runs, it starts docker.service; without systemd (containers, VMs
# started by a process supervisor) it starts dockerd itself, in the background:
#
#   dockerd --storage-driver=overlay2 --iptables=false --ip6tables=false \
#           --data-root=$S2AP_DOCKER_ROOT --pidfile=/var/run/s2ap-dockerd.pid
#
# --iptables=false: dockerd does not rewrite this machine's firewall (it is shared). Containers on
# a compose network still reach each other by service name and publish ports on 127.0.0.1 through
# docker-proxy; they have no route to the internet, which only image builds need, and those run
# on the host network (docker/image.sh). The data root is a dedicated directory (images, volumes),
# not the repository. overlay2 falls back to vfs (slow, large) only if overlay2 fails.
# Nothing here stops the daemon: it serves every later build and test. Stop it by its PID:
#   kill "$(cat /var/run/s2ap-dockerd.pid)"
set -euo pipefail

root=${S2AP_DOCKER_ROOT:-/var/lib/s2ap-docker}
log=${S2AP_DOCKER_LOG:-/var/log/s2ap-dockerd.log}
pidfile=/var/run/s2ap-dockerd.pid

say() { echo "docker/host.sh: $*" >&2; }
die() {
  say "$*"
  exit 1
}
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "needs root for: $* (no sudo)"
  fi
}

apt_install() { # apt_install PACKAGE... (only the missing ones are asked for)
  command -v apt-get >/dev/null || die "cannot install $* here (no apt-get): install them by hand"
  say "installing $* (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >/dev/null
}

daemon_answers() { docker info >/dev/null 2>&1; }

start_dockerd() {
  local driver=$1
  [ "$(id -u)" -eq 0 ] || die "no Docker daemon answers, and starting one needs root (sudo make ...)"
  mkdir -p "$root"
  say "starting dockerd ($driver, data root $root, log $log)"
  nohup dockerd --storage-driver="$driver" --iptables=false --ip6tables=false \
    --data-root="$root" --pidfile="$pidfile" >>"$log" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 1 60); do
    if daemon_answers; then
      say "dockerd $pid answers (storage driver $driver)"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" || true
  fi
  say "dockerd ($driver) did not come up; the end of $log:"
  tail -15 "$log" >&2 || true
  return 1
}

ensure_docker() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 ||
    missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  command -v docker >/dev/null || die "no docker command after installing docker.io"
  daemon_answers && return 0
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    say "starting docker.service"
    as_root systemctl start docker && daemon_answers && return 0
  fi
  start_dockerd overlay2 || start_dockerd vfs ||
    die "could not start a Docker daemon (see $log); Docker-based targets cannot run here"
}

ensure_docker
if [ "${1:-}" = debootstrap ]; then
  command -v debootstrap >/dev/null || apt_install debootstrap
fi
docker version --format 'docker: client {{.Client.Version}}, server {{.Server.Version}}' 2>/dev/null ||
  true
