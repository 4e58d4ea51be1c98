#!/usr/bin/env bash
# Build meshserve's images with Podman (Debian packages, no Docker daemon, no image registry).
#
#   scripts/images.sh [base|meshserve|local|all]    (default: all; run as root)
#
#   base       localhost/local/debian:bookworm, made with debootstrap from the Debian mirror apt
#              already uses (no registry is reachable on these machines)
#   meshserve  docker/Dockerfile's targets router, scheduler, controller, puller, mlserver, all
#              from one shared `app` stage (built once), FROM the local base
#   local      the compose stack's Redis, Postgres and S3 (moto) stand-ins, built from the local
#              base (docker/local/*.Dockerfile) under the names docker-compose.local.yml gives them
#
# IMAGES_FROM=<git revision> (e.g. HEAD) builds from `git archive` of that revision instead of
# the working tree, so uncommitted edits stay out of the images.
# Idempotent: the base image is made only when missing (REBUILD_BASE=1 forces it), and the
# builds reuse podman's layer cache. Podman's configuration comes from
# docker/podman/containers.conf through CONTAINERS_CONF (no system file is edited).
# pip/uv inside the builds reach PyPI through the host's CA bundle, passed as the build secret
# `hostca` (mounted only by the RUN steps that install, never stored in a layer). If UV_CACHE_DIR_HOST names a uv cache on the host
# (default: ~/.cache/uv when present), it is mounted as the build's uv cache: no downloads for
# what the host already has. Timings and sizes go to stdout and to $IMAGES_REPORT (if set).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/podman/containers.conf}"

BASE_IMAGE="${BASE_IMAGE:-localhost/local/debian:bookworm}"
TAG="${MESHSERVE_TAG:-0.1.0}"
TARGETS="${TARGETS:-router scheduler controller puller mlserver}"
HOST_CA="${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}"
UV_CACHE_DIR_HOST="${UV_CACHE_DIR_HOST-$HOME/.cache/uv}"
APT_PACKAGES="podman buildah runc debootstrap"

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
report() {
  log "$*"
  if [ -n "${IMAGES_REPORT:-}" ]; then printf '%s\n' "$*" >>"$IMAGES_REPORT"; fi
}

need_tools() {
  local missing=""
  for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null || missing=1
  done
  if [ -n "$missing" ]; then
    log "installing $APT_PACKAGES (apt-get)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $APT_PACKAGES
  fi
}

# The Debian mirror apt already uses (deb822 or one-line sources), else deb.debian.org.
debian_mirror() {
  local uri
  uri="$(grep -rhoE '^URIs: *http[^ ]*/debian/?$' /etc/apt/sources.list.d/ 2>/dev/null | head -1 | sed 's/^URIs: *//')"
  if [ -z "$uri" ]; then
    uri="$(grep -rhoE '^deb +http[^ ]*/debian/? +bookworm' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
      | head -1 | awk '{print $2}')"
  fi
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  if [ -z "${REBUILD_BASE:-}" ] && podman image exists "$BASE_IMAGE"; then
    log "base $BASE_IMAGE exists (REBUILD_BASE=1 to make it again)"
    return
  fi
  local mirror rootfs start
  mirror="$(debian_mirror)"
  rootfs="$(mktemp -d /var/tmp/meshserve-rootfs.XXXXXX)"
  start=$SECONDS
  log "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/var/tmp/meshserve-debootstrap.log 2>&1 \
    || { tail -20 /var/tmp/meshserve-debootstrap.log; rm -rf "$rootfs"; exit 1; }
  local security="${mirror%/}"
  security="${security%/debian}/debian-security"
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  report "built $BASE_IMAGE in $((SECONDS - start)) s"
}

CONTEXT="$ROOT"
prepare_context() {
  if [ -n "${IMAGES_FROM:-}" ] && [ "$CONTEXT" = "$ROOT" ]; then
    CONTEXT="$(mktemp -d /var/tmp/meshserve-context.XXXXXX)"
    trap 'rm -rf "$CONTEXT"' EXIT
    git -C "$ROOT" archive "$IMAGES_FROM" | tar -x -C "$CONTEXT"
    log "build context: git archive $IMAGES_FROM ($(git -C "$ROOT" rev-parse --short "$IMAGES_FROM"))"
  fi
}

build_args() {
  prepare_context
  # the host CA bundle for pip/uv as a build secret; the host uv cache when there is one
  BUILD_OPTS=()
  if [ -s "$HOST_CA" ]; then
    BUILD_OPTS+=(--secret "id=hostca,src=$HOST_CA")
  fi
  if [ -n "$UV_CACHE_DIR_HOST" ] && [ -d "$UV_CACHE_DIR_HOST" ]; then
    BUILD_OPTS+=(--volume "$UV_CACHE_DIR_HOST:/root/.cache/uv")
  fi
}

build_meshserve() {
  build_args
  local target start
  for target in $TARGETS; do
    start=$SECONDS
    log "building meshserve/$target:$TAG (docker/Dockerfile --target $target)"
    podman build --layers -f "$CONTEXT/docker/Dockerfile" --target "$target" \
      --build-arg BASE_IMAGE="$BASE_IMAGE" "${BUILD_OPTS[@]}" \
      -t "meshserve/$target:$TAG" "$CONTEXT" \
      || { log "build of $target failed"; exit 1; }
    report "built meshserve/$target:$TAG in $((SECONDS - start)) s"
  done
}

build_local() {
  build_args
  local name context start
  for name in redis postgres s3; do
    context="$CONTEXT/docker/local"
    [ "$name" != s3 ] || context="$CONTEXT"  # s3 reads requirements.lock and docker/uv-install.sh
    start=$SECONDS
    log "building localhost/local/$name (docker/local/$name.Dockerfile)"
    podman build --layers -f "$CONTEXT/docker/local/$name.Dockerfile" \
      --build-arg BASE_IMAGE="$BASE_IMAGE" "${BUILD_OPTS[@]}" -t "localhost/local/$name:bookworm" "$context" \
      || { log "build of $name failed"; exit 1; }
    report "built localhost/local/$name:bookworm in $((SECONDS - start)) s"
  done
}

sizes() {
  report "image sizes:"
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E '^(localhost/)?(local|meshserve)/' | sort | while read -r line; do report "  $line"; done
}

[ "$(id -u)" = 0 ] || { echo "scripts/images.sh: run as root (rootful podman)" >&2; exit 2; }
what="${1:-all}"
need_tools
case "$what" in
  base) build_base ;;
  meshserve) build_base; build_meshserve ;;
  local) build_base; build_local ;;
  all) build_base; build_meshserve; build_local ;;
  *) echo "usage: $0 [base|meshserve|local|all]" >&2; exit 2 ;;
esac
sizes
