#!/usr/bin/env bash
# Imports an OCI archive (buildah/podman push oci-archive:FILE:NAME, as
# `make agent-image` writes target/merak-agent-0.1.0.oci.tar) into the real
# cluster's containerd, in the k8s.io namespace the kubelet uses. Pods then
# run it with imagePullPolicy: Never or IfNotPresent (no registry here).
#
#   tests/real-cluster/import-image.sh ARCHIVE
set -euo pipefail
source "$(dirname "$0")/common.sh"

archive=${1:?usage: import-image.sh ARCHIVE}
[[ -f $archive ]] || { echo "import-image.sh: $archive: no such file" >&2; exit 1; }
containerd_alive || { echo "import-image.sh: the real cluster's containerd is not running (make real-cluster)" >&2; exit 1; }
# The image keeps the name the archive carries (its ref.name annotation).
ctr_ images import "$archive"
