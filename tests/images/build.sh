#!/bin/sh
# Builds the images the Docker backend tests run, from a busybox-static root filesystem (nothing is
# pulled), and creates the nvflare-network bridge. Idempotent: an image whose recorded content hash
# matches is kept. Needs /usr/bin/busybox (apt-get install busybox-static) and a running dockerd.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
image=launcher-test/fake-python:1
network=${NVFLARE_TEST_NETWORK:-nvflare-network}
busybox=$(command -v busybox || echo /usr/bin/busybox)

hash=$(cat "$0" "$here/fake-python.sh" "$busybox" | sha256sum | cut -c1-16)
current=$(docker image inspect -f '{{index .Config.Labels "launcher-test.hash"}}' "$image" 2>/dev/null || true)
if [ "$current" != "$hash" ]; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/bin" "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/dev" "$root/proc" "$root/sys"
    chmod 1777 "$root/tmp"
    cp "$busybox" "$root/bin/busybox"
    for applet in sh sleep echo cat env ls id pwd printf sort sed dd true false kill; do
        ln -s busybox "$root/bin/$applet"
    done
    install -m 0755 "$here/fake-python.sh" "$root/usr/local/bin/python"
    printf 'root:x:0:0:root:/root:/bin/sh\nnvflare:x:1000:1000:nvflare:/tmp:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnvflare:x:1000:\n' > "$root/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$root" -c . \
        | docker import -c "LABEL launcher-test.hash=$hash" -c 'ENV PATH=/usr/local/bin:/bin' - "$image" >/dev/null
    echo "built $image ($hash)"
fi
docker network inspect "$network" >/dev/null 2>&1 || docker network create "$network" >/dev/null
