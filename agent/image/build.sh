#!/usr/bin/env bash
# The agent's OCI image, built with buildah from scratch: the merak-agent
# binary, busybox with its applets on PATH (the commands `merak exec` runs in
# an EPM or vswitch pod: sh, ip, ping, cat...), nft and its libnftables (the
# agent enforces security groups through the library; operators read
# tables with nft), and the shared libraries they link (as ldd
# lists them), nothing else. No base image, no registry
# pull: what runs in the pod is exactly what was built and tested here.
#
#   agent/image/build.sh BINARY ARCHIVE [NAME]
#
# Commits NAME (default localhost/merak-agent:latest) to the local container
# storage and writes it to ARCHIVE as an oci-archive (podman load -i ARCHIVE,
# or skopeo/podman push it to a registry).
set -euo pipefail
binary=$1
archive=$2
name=${3:-localhost/merak-agent:latest}
for command in buildah ldd busybox nft; do
  command -v "$command" >/dev/null || { echo "$command is missing: run 'make deps' (apt-get install buildah busybox-static nftables)" >&2; exit 1; }
done
busybox=$(command -v busybox)
nft=$(command -v nft)
[ -x "$binary" ] || { echo "$binary: no such executable (build the agent first)" >&2; exit 1; }

# The dynamic loader and each library, at the path the binaries ask for (a
# static busybox asks for none).
libraries=$( (ldd "$binary"; ldd "$nft"; ldd "$busybox" 2>/dev/null || true) \
  | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)

# busybox and one symlink per applet, so that `sh`, `ip`, `ping`... resolve on PATH.
rootfs=$(mktemp -d)
container=$(buildah from --quiet scratch)
trap 'buildah rm "$container" >/dev/null 2>&1 || true; rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/bin"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] || ln -s busybox "$rootfs/bin/$applet"
done
buildah copy --quiet "$container" "$rootfs/" / >/dev/null
buildah copy --quiet --chmod 0755 "$container" "$binary" /usr/bin/merak-agent >/dev/null
buildah copy --quiet --chmod 0755 "$container" "$(readlink -f "$nft")" /usr/sbin/nft >/dev/null
for library in $libraries; do
  buildah copy --quiet "$container" "$(readlink -f "$library")" "$library" >/dev/null
done
buildah config \
  --entrypoint '["/usr/bin/merak-agent"]' --cmd '' \
  --label org.opencontainers.image.title=merak-agent \
  --label org.opencontainers.image.description="merak-agent: the network-device agent inside an EPM" \
  --label "org.opencontainers.image.version=$("$binary" --version | awk '{ print $2 }')" \
  "$container"
buildah commit --quiet "$container" "$name" >/dev/null
mkdir -p "$(dirname "$archive")"
rm -f "$archive"
buildah push --quiet "$name" "oci-archive:$archive:$name" >/dev/null
echo "$name -> $archive"
