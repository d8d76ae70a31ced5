#!/usr/bin/env bash
# Builds the cluster's own small OCI images (no registry is reachable here):
#
#   images/build.sh pause     the pod sandbox image (pause.c, gcc -static)
#   images/build.sh busybox   a test image: Debian's busybox-static, applets linked
#   images/build.sh agent BINARY REF
#                             merak-agent's image (agent/image/build.sh) from
#                             BINARY, named REF: the tests' debug build
#
# Each is written to target/real-cluster/images/NAME.oci.tar (kept across
# up/down; rebuilt when older than its sources) and named
# localhost/merak-real-cluster/NAME:1.0 (the agent: REF). Import with
# ../import-image.sh. Prints the archive's path.
#
# buildah runs with its own --root/--runroot (removed afterwards) and the vfs
# driver (no overlay mounts to leave behind); the only thing it writes outside
# them is a blob-info cache under /var/lib/containers, removed again when we
# were the ones to create it (podman's own storage there is never touched).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=$root/target/real-cluster/images
name=${1:?usage: images/build.sh pause|busybox|agent BINARY REF}
archive=$out/$name.oci.tar
ref=localhost/merak-real-cluster/$name:1.0

case $name in
    pause) sources=("$here/pause.c" "$0") ;;
    busybox) sources=(/bin/busybox "$0") ;;
    agent)
        binary=${2:?usage: images/build.sh agent BINARY REF}
        ref=${3:?usage: images/build.sh agent BINARY REF}
        archive=$out/agent-${ref//[^A-Za-z0-9.-]/_}.oci.tar
        sources=("$binary" "$root/agent/image/build.sh" "$0")
        ;;
    *) echo "images/build.sh: unknown image '$name' (pause, busybox or agent)" >&2; exit 1 ;;
esac

fresh=1
for s in "${sources[@]}"; do
    [[ -f $archive && $archive -nt $s ]] || fresh=0
done
if ((fresh)); then
    echo "$archive"
    exit 0
fi

need() {
    command -v "$1" >/dev/null || { echo "images/build.sh: $1 is missing (apt-get install $2)" >&2; exit 1; }
}
need buildah buildah

mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
B=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
container=
cleanup() {
    if [[ -n $container ]]; then "${B[@]}" rm "$container" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
    # rmdir only removes what is empty: whatever podman keeps there stays.
    rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb 2>/dev/null || true
    rmdir /var/lib/containers/cache /var/lib/containers 2>/dev/null || true
}
trap cleanup EXIT

if [[ $name == agent ]]; then
    # The project's own image script, its buildah pointed at our storage.
    printf '[storage]\ndriver = "vfs"\nrunroot = "%s"\ngraphroot = "%s"\n' "$work/run" "$work/storage" >"$work/storage.conf"
    CONTAINERS_STORAGE_CONF=$work/storage.conf "$root/agent/image/build.sh" "$binary" "$archive.tmp" "$ref" >/dev/null
    mv "$archive.tmp" "$archive"
    echo "$archive"
    exit 0
fi

mkdir -p "$work/rootfs"
case $name in
    pause)
        need gcc "gcc libc6-dev"
        gcc -static -Os -s -Wall -o "$work/rootfs/pause" "$here/pause.c"
        entrypoint='["/pause"]'
        ;;
    busybox)
        need busybox busybox-static
        mkdir -p "$work/rootfs/bin"
        cp /bin/busybox "$work/rootfs/bin/busybox"
        # One symlink per applet, so `sh`, `sleep`, `cat`... resolve on PATH.
        for applet in $(/bin/busybox --list); do
            [[ $applet == busybox ]] || ln -s busybox "$work/rootfs/bin/$applet"
        done
        entrypoint='["/bin/sh"]'
        ;;
esac

container=$("${B[@]}" from --quiet scratch)
"${B[@]}" copy --quiet "$container" "$work/rootfs/" / >/dev/null
"${B[@]}" config --entrypoint "$entrypoint" --cmd '' --env PATH=/bin \
    --label "org.opencontainers.image.title=merak-real-cluster-$name" "$container"
"${B[@]}" commit --quiet --format oci "$container" "$ref" >/dev/null
rm -f "$archive"
"${B[@]}" push --quiet "$ref" "oci-archive:$archive.tmp:$ref" >/dev/null
mv "$archive.tmp" "$archive"
echo "$archive"
