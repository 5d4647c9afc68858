#!/bin/sh
# Builds the images the composed-layout test (tests/compose) runs, without a registry (nothing is
# pulled): two Debian bookworm minbase root filesystems from debootstrap (Debian's mirror), imported
# with `docker import`:
#   local/flare-launcher-base:bookworm      python3 + python3-venv: the Dockerfile's BASE_IMAGE
#   local/flare-launcher-services:bookworm  postgresql-15 + redis-server (bookworm's own)
# then the app image (local/flare-launcher:compose-test) with `docker build --network host` FROM
# the first, so pip reaches PyPI through the host. Idempotent: a base image whose recorded content
# hash matches is kept (~1-2 min otherwise); the app build is Docker's layer cache (seconds).
# Needs root (debootstrap, installed when missing) and dockerd.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
base=${COMPOSE_TEST_BASE_IMAGE:-local/flare-launcher-base:bookworm}
services=${COMPOSE_TEST_SERVICES_IMAGE:-local/flare-launcher-services:bookworm}
app=${COMPOSE_TEST_APP_IMAGE:-local/flare-launcher:compose-test}
# The host's CA bundle, so pip in the build trusts what the host's pip trusts (an egress proxy's CA).
cabundle=${COMPOSE_TEST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if ! command -v debootstrap >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "need root to apt-get install debootstrap" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs"

# bootstrap <image> <hash input> <packages>: a minbase rootfs with <packages>, imported as <image>
bootstrap() {
    image=$1 extra=$2 packages=$3
    hash=$( (cat "$0"; echo "$packages"; [ -z "$extra" ] || cat "$extra") | sha256sum | cut -c1-16)
    current=$(docker image inspect -f '{{index .Config.Labels "launcher-test.hash"}}' "$image" 2>/dev/null || true)
    [ "$current" = "$hash" ] && return 0
    rootfs="$work/rootfs-$(echo "$image" | tr '/:' '__')"
    debootstrap --variant=minbase --cache-dir="$work/debs" --include="$packages" bookworm "$rootfs" \
        >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    if [ -n "$extra" ]; then  # pip's trust store (the app image only; services never fetch anything)
        mkdir -p "$rootfs/usr/local/share/flare-launcher"
        cp "$cabundle" "$rootfs/usr/local/share/flare-launcher/ca-bundle.crt"
        printf '[global]\ncert = /usr/local/share/flare-launcher/ca-bundle.crt\n' > "$rootfs/etc/pip.conf"
    fi
    rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/* "$rootfs/var/lib/postgresql"/*/main \
        "$rootfs/etc/postgresql"/*/main
    tar --numeric-owner -C "$rootfs" -c . | docker import -c "LABEL launcher-test.hash=$hash" \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' - "$image" >/dev/null
    rm -rf "$rootfs"
    echo "built $image ($hash)"
}

bootstrap "$base" "$cabundle" python3,python3-venv
bootstrap "$services" "" postgresql-15,redis-server

# Docker's layer cache keeps this to seconds when neither the base nor the context changed.
docker build -q --network host --build-arg "BASE_IMAGE=$base" -t "$app" "$repo" >/dev/null
echo "ready: $app (FROM $base), $services"
