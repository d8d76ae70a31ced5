#!/usr/bin/env bash
# Packages built binaries as a provider release, in the layouts the
# Terraform and OpenTofu registries and a provider network mirror serve.
#
#   release/package.sh BIN_DIR VERSION OUT_DIR
#
# BIN_DIR holds terraform-provider-merak, merak-agent and merak (target/release for
# `make release`). OUT_DIR receives:
#   terraform-provider-merak_VERSION_linux_amd64.zip   the provider binary, named
#       terraform-provider-merak_vVERSION as Terraform expects, with merak-agent
#       beside it (the provider runs the agent it finds next to itself) and
#       merak, the command that operates a running emulation
#   terraform-provider-merak_VERSION_manifest.json     plugin protocol versions
#   terraform-provider-merak_VERSION_SHA256SUMS        of the zip and the manifest
#   terraform-provider-merak_VERSION_SHA256SUMS.sig    detached binary signature by
#       the GPG key $MERAK_GPG_KEY names (a registry demands it; a network
#       mirror does not, so without the variable it is left out, said aloud)
#   mirror/HOST/merak/merak/{index.json,VERSION.json,the zip}   the provider
#       network mirror protocol's layout, for registry.terraform.io and
#       registry.opentofu.org: serve mirror/ over HTTPS and point
#       provider_installation { network_mirror { url = ... } } at it.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 BIN_DIR VERSION OUT_DIR" >&2
    exit 64
fi
bin_dir=$1 version=$2 out=$3
name=terraform-provider-merak
platform=linux_amd64
zip_name=${name}_${version}_${platform}.zip
manifest=${name}_${version}_manifest.json
sums=${name}_${version}_SHA256SUMS

for binary in "$name" merak-agent merak; do
    if [ ! -x "$bin_dir/$binary" ]; then
        echo "$bin_dir/$binary is missing: build it first (make release builds with --release)" >&2
        exit 1
    fi
done
for tool in zip sha256sum; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install $tool)" >&2; exit 1; }
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
install -m 0755 "$bin_dir/$name" "$staging/${name}_v${version}"
install -m 0755 "$bin_dir/merak-agent" "$staging/merak-agent"
install -m 0755 "$bin_dir/merak" "$staging/merak"
# Fixed times and no extra fields (-X): the same binaries give the same zip,
# so its checksum names the binaries, not the moment they were packed.
touch -d '1980-01-02T00:00:00Z' "$staging/${name}_v${version}" "$staging/merak-agent" "$staging/merak"
rm -f "$out/$zip_name"
(cd "$staging" && TZ=UTC zip -q -X "$out/$zip_name" "${name}_v${version}" merak-agent merak)

printf '{\n  "version": 1,\n  "metadata": {\n    "protocol_versions": ["6.0"]\n  }\n}\n' > "$out/$manifest"
(cd "$out" && sha256sum "$zip_name" "$manifest" > "$sums")

rm -f "$out/$sums.sig"
if [ -n "${MERAK_GPG_KEY:-}" ]; then
    gpg --batch --yes --local-user "$MERAK_GPG_KEY" --output "$out/$sums.sig" --detach-sign "$out/$sums"
else
    echo "note: $sums is not signed (set MERAK_GPG_KEY to a GPG key to sign it); a network mirror needs no signature, a registry does" >&2
fi

zip_sha=$(sha256sum "$out/$zip_name" | cut -d' ' -f1)
for host in registry.terraform.io registry.opentofu.org; do
    dir=$out/mirror/$host/merak/merak
    mkdir -p "$dir"
    ln -f "$out/$zip_name" "$dir/$zip_name" 2>/dev/null || cp "$out/$zip_name" "$dir/$zip_name"
    # Versions the mirror offers, then one version's archives: URLs are
    # relative to the JSON that names them; zh: is the zip's SHA-256.
    printf '{"versions":{"%s":{}}}\n' "$version" > "$dir/index.json"
    printf '{"archives":{"%s":{"url":"%s","hashes":["zh:%s"]}}}\n' "$platform" "$zip_name" "$zip_sha" > "$dir/$version.json"
done
echo "$out: $zip_name, $manifest, $sums$([ -f "$out/$sums.sig" ] && echo ", $sums.sig"), mirror/"
