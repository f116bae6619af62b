#!/usr/bin/env bash
# Build the dsen2cr container image (make image): docker or podman where one works, else buildah (as root,
# --isolation chroot) on a Debian bookworm base that debootstrap makes when it is missing.
# Usage: scripts/build_image.sh [IMAGE] [docker build args...]   (default IMAGE: localhost/dsen2cr:cpu)
set -euo pipefail
IMAGE=${1:-localhost/dsen2cr:cpu}
shift || true
cd "$(dirname "$0")/.."
mkdir -p wheels
args=()
# Where PyTorch's CPU index is out of reach (this project's machines), a CPU wheel on this disk is used instead.
for dir in ${LOCAL_TORCH_WHEELS:-/opt/wheels}; do
  for wheel in "$dir"/torch-*+cpu-*.whl; do
    [ -f "$wheel" ] || continue
    cp -n "$wheel" wheels/
    args+=(--build-arg TORCH_INDEX=https://pypi.org/simple)
  done
done
# A proxy's certificates that pip here trusts (PIP_CERT) are trusted by the build's pip too.
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  cp "$PIP_CERT" wheels/pip-ca.crt
fi
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  exec docker build -t "$IMAGE" "${args[@]}" "$@" .
fi
if command -v podman >/dev/null && podman info >/dev/null 2>&1; then
  exec podman build -t "$IMAGE" "${args[@]}" "$@" .
fi
if ! command -v buildah >/dev/null; then
  echo "make image: needs docker, podman or buildah (Debian: apt-get install buildah debootstrap)" >&2
  exit 2
fi
BASE=${DEBIAN_BASE:-localhost/debian:bookworm-min}
if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  root=$(mktemp -d)
  trap 'rm -rf "$root" "$root.tar"' EXIT
  echo "make image: making $BASE with debootstrap"
  debootstrap --variant=minbase bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  tar -C "$root" -cf "$root.tar" .
  container=$(buildah from scratch)
  buildah add "$container" "$root.tar" / >/dev/null
  buildah commit -q "$container" "$BASE" >/dev/null
  buildah rm "$container" >/dev/null
fi
exec buildah bud --isolation chroot --build-arg BASE="$BASE" -t "$IMAGE" "${args[@]}" "$@" .
