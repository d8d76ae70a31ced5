#!/usr/bin/env bash
# The acceptance suite under OpenTofu (part of make test): builds tofu from
# its Go module (cached in target/tools), then runs the acceptance tests
# with it in place of terraform (MERAK_CLIENT_PASS: scenarios that exercise
# only a runtime, not the protocol, are left to make test's first pass). Where Go is missing it says so in one line
# and succeeds: the rest of make test still runs.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cargo=${CARGO:-cargo}

reason=$(mktemp)
trap 'rm -f "$reason"' EXIT
tofu=$("$here/build.sh" 2>"$reason")
status=$?
if ((status == 2)); then
    echo "opentofu: the acceptance suite does not run under OpenTofu on this machine: $(cat "$reason")"
    exit 0
elif ((status != 0)); then
    cat "$reason" >&2
    exit "$status"
fi
cat "$reason" >&2
echo "opentofu: the acceptance suite under $("$tofu" version 2>/dev/null | grep -m 1 "^OpenTofu")"
# The real cluster's quickstart under OpenTofu; its other scenarios test
# Kubernetes, which the first pass of make test covers.
MERAK_TERRAFORM=$tofu MERAK_CLIENT_PASS=1 MERAK_REAL_CLUSTER_ONLY=quickstart exec "$cargo" test -p merak-acceptance -- --test-threads=2
