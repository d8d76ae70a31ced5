#!/usr/bin/env bash
# Builds OpenTofu's `tofu` from its published Go module (the wrapper module
# beside this script) into target/tools/tofu-VERSION, where the Makefile and
# the acceptance tests find it. Cached: skipped while the binary is newer than
# the wrapper's go.mod and go.sum. The Go module and build caches are the
# user's defaults, so a rebuild reuses everything already compiled.
#
# Without Go it says so in one line and exits 2.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(awk '$1 == "require" && $2 == "github.com/opentofu/opentofu" { sub(/^v/, "", $3); print $3 }' "$here/go.mod")
out=${1:-$root/target/tools}/tofu-$version

if [[ -x $out && $out -nt $here/go.mod && $out -nt $here/go.sum ]]; then
    echo "$out"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "opentofu: 'go' is not on PATH (Go >= 1.26 builds OpenTofu $version from its module)" >&2
    exit 2
fi
mkdir -p "$(dirname "$out")"
start=$SECONDS
# version.dev=no: else it calls itself $version-dev. nice: another developer's
# timing-sensitive tests may share these two cores.
(cd "$here" && CGO_ENABLED=0 nice -n 10 go build -buildvcs=false -trimpath \
    -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" \
    -o "$out.tmp" github.com/opentofu/opentofu/cmd/tofu)
mv "$out.tmp" "$out"
echo "opentofu: built tofu $version in $((SECONDS - start)) s" >&2
echo "$out"
