#!/bin/sh
# Builds local/nvflare-py:<version>, the image the real-NVFlare Docker tests (tests/nvflare_poc) run
# job containers from: a Debian bookworm minbase root filesystem with python3 (debootstrap, Debian's
# mirror; nothing is pulled from a registry) plus nvflare and its requirements copied from the test
# venv (tests/images/nvflare_files.py lists them). Idempotent: an image whose recorded content hash
# matches is kept (~40 s otherwise). Needs root (debootstrap, installed when missing) and dockerd.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${NVFLARE_IMAGE_PYTHON:-$here/../../.venv/bin/python}
version=$("$python" -c 'from importlib.metadata import version; print(version("nvflare"))')
image=${NVFLARE_TEST_IMAGE:-local/nvflare-py:$version}
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
files=$(mktemp)
trap 'rm -f "$files"' EXIT
"$python" "$here/nvflare_files.py" nvflare > "$files"

hash=$(cat "$0" "$here/nvflare_files.py" "$files" | sha256sum | cut -c1-16)
current=$(docker image inspect -f '{{index .Config.Labels "launcher-test.hash"}}' "$image" 2>/dev/null || true)
[ "$current" = "$hash" ] && exit 0

if ! command -v debootstrap >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "need root to apt-get install debootstrap" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
root=$(mktemp -d)
trap 'rm -f "$files"; rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3 bookworm "$root/rootfs" >"$root/debootstrap.log" 2>&1 \
    || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
dest="$root/rootfs/usr/local/lib/python3.11/dist-packages"
mkdir -p "$dest"
(cd "$site" && tar -cf - -T "$files") | tar -C "$dest" -xf -
ln -sf /usr/bin/python3 "$root/rootfs/usr/local/bin/python"
rm -rf "$root/rootfs/var/cache/apt/archives"/*.deb "$root/rootfs/var/lib/apt/lists"/*
tar --numeric-owner -C "$root/rootfs" -c . | docker import -c "LABEL launcher-test.hash=$hash" \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$image" >/dev/null
echo "built $image ($hash)"
