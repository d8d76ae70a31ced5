#!/usr/bin/env bash
# Builds the binaries of the real single-node cluster from their published Go
# modules (wrapper modules beside this script) into target/real-cluster/bin:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and etcd.
# containerd, runc and the CNI plugins come from Debian (see up.sh).
#
# Cached: a set whose binaries all exist and are newer than its go.mod and
# go.sum is skipped. The Go module and build caches are the user's defaults,
# so a rebuild after a change reuses everything already compiled.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${REAL_CLUSTER_BIN:-$root/target/real-cluster/bin}

K8S_VERSION=v1.36.3
k8s_major=${K8S_VERSION#v}; k8s_major=${k8s_major%%.*}
k8s_minor=${K8S_VERSION#v*.}; k8s_minor=${k8s_minor%%.*}

# Whether every named binary exists and is newer than the module's go.mod/go.sum.
fresh() {
    local mod=$1; shift
    local b
    for b in "$@"; do
        [[ -x $bin/$b && $bin/$b -nt $mod/go.mod && $bin/$b -nt $mod/go.sum ]] || return 1
    done
}

# Checked only when something is to be built: binaries already built run
# without Go (under sudo, say, whose PATH may not have it).
need_go() {
    if ! command -v go >/dev/null 2>&1; then
        echo "real-cluster: 'go' is not on PATH (Go >= 1.26 is needed to build Kubernetes and etcd)" >&2
        exit 2
    fi
}

# Another developer may be running timing-sensitive tests on this 2-core
# machine: compile at a lower priority. CGO off gives static binaries, as the
# upstream release builds do; no VCS stamping (the wrapper sits in our tree and
# would be relinked whenever that tree changes).
gobuild() {
    CGO_ENABLED=0 nice -n 10 go build -buildvcs=false "$@"
}

mkdir -p "$bin"

k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
if fresh "$here/kubernetes" "${k8s_bins[@]}"; then
    echo "real-cluster: Kubernetes $K8S_VERSION binaries are up to date"
else
    need_go
    echo "real-cluster: building Kubernetes $K8S_VERSION (cold: about 4-5 minutes on 2 cores)"
    start=$SECONDS
    # Without these the binaries call themselves v0.0.0-master and the
    # apiserver/kubelet version checks and `kubectl version` show nonsense.
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$k8s_major"
        ldflags+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
    done
    (cd "$here/kubernetes" && gobuild -ldflags "$ldflags" -o "$bin/" \
        "${k8s_bins[@]/#/k8s.io/kubernetes/cmd/}")
    # go build leaves an unchanged binary's mtime alone: touch so the cache
    # check above sees them as newer than a go.mod edited without effect.
    (cd "$bin" && touch "${k8s_bins[@]}")
    echo "real-cluster: Kubernetes built in $((SECONDS - start)) s"
fi

if fresh "$here/etcd" etcd; then
    echo "real-cluster: etcd is up to date"
else
    need_go
    echo "real-cluster: building etcd"
    start=$SECONDS
    # The server's main is the root package of go.etcd.io/etcd/server/v3.
    (cd "$here/etcd" && gobuild -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
    touch "$bin/etcd"
    echo "real-cluster: etcd built in $((SECONDS - start)) s"
fi
