#!/bin/bash
# A Python base image for the sidecar's Dockerfile, made without any registry: the debootstrap
# bookworm rootfs that ../shared/dms-image/build.sh caches (the debian:12-slim look-alike), plus
# Debian's python3 (3.11), python3-venv and python-is-python3, then `docker import`.
# The sidecar is then built with `--build-arg PYTHON_IMAGE=<this tag>`.
#   usage: build-python-base.sh TAG      (DOCKER_HOST: the engine to import into)
# Cached: an image with this recipe's label is not built again.
set -eE -u -o pipefail
TAG=${1:?usage: build-python-base.sh TAG}
W=${DMS_IMAGE_WORK:-/var/tmp/dms-image}
BASE_TAR=$W/cache/rootfs-base.tar
RECIPE=$(sha256sum "$0" | cut -c1-16)
if [[ $(docker image inspect "$TAG" --format '{{index .Config.Labels "dms-reconciler.recipe"}}' 2>/dev/null) == "$RECIPE" ]]; then
  echo "$TAG is up to date (recipe $RECIPE)"; exit 0
fi
[[ -f $BASE_TAR ]] || { echo "missing $BASE_TAR: run ../shared/dms-image/build.sh first" >&2; exit 1; }
ROOT=$(mktemp -d "$W/python-base.XXXXXX")
MOUNTED=()
cleanup() {
  for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount -l "${MOUNTED[i]}" 2>/dev/null || true; done
  rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT
tar -C "$ROOT" --numeric-owner -xf "$BASE_TAR"
mount -t proc proc "$ROOT/proc"; MOUNTED+=("$ROOT/proc")
mount --bind /dev "$ROOT/dev"; MOUNTED+=("$ROOT/dev")
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  /bin/sh -ec 'apt-get -qq update
    apt-get -qq install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates >/dev/null
    apt-get clean; rm -rf /var/lib/apt/lists/*'
# The sidecar's `pip install .` reaches the package index from the machine that builds it: where
# that goes through a TLS-inspecting proxy, the proxy's CA is only in the host's bundle. Give the
# base image the host's bundle and point pip at it (set-up of this machine, not of the product).
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$ROOT/etc/pip.conf"
: > "$ROOT/etc/resolv.conf"
for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount -l "${MOUNTED[i]}"; done; MOUNTED=()
tar -C "$ROOT" --numeric-owner -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8' \
  -c "LABEL dms-reconciler.recipe=$RECIPE" -c 'CMD ["python3"]' - "$TAG"
