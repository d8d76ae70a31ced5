# shellcheck shell=bash disable=SC2034  # the variables are for the scripts sourcing it
# Shared by up.sh, down.sh and import-image.sh (sourced, not run): where the
# real single-node cluster keeps its things, and small helpers.
#
# Everything it makes lives under three roots, so that down.sh can remove it
# all without touching anything else on the machine:
#   $STATE  target/real-cluster/   logs, pids, certificates, kubeconfigs,
#                                  etcd data, containerd's root (images)
#   $RUN    /run/merak-real-cluster  sockets, containerd's and runc's state,
#                                  the CNI config and IP allocations
#   /var/lib/kubelet, /var/log/pods, /var/log/containers  (the kubelet's own)
# bin/ and images/ under $STATE are build outputs and survive down.sh.

REAL_CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$REAL_CLUSTER_DIR/../.." && pwd)
STATE=$ROOT/target/real-cluster
BIN=$STATE/bin
LOGS=$STATE/logs
PIDS=$STATE/pids
# Each started process's command line, NUL-separated, by name.
COMMANDS=$STATE/commands
PKI=$STATE/pki
KUBECONFIG_ADMIN=$STATE/kubeconfig
RUN=/run/merak-real-cluster
CONTAINERD_ROOT=$STATE/containerd
CONTAINERD_STATE=$RUN/containerd
CONTAINERD_SOCK=$RUN/containerd.sock
KUBELET_DIR=/var/lib/kubelet

# The pod network: a bridge (named so it cannot be taken for another tool's)
# and a range none of the project's tests use (they use 10.0/10.1/10.10/10.211).
POD_CIDR=172.30.0.0/16
SERVICE_CIDR=172.31.0.0/16
FIRST_SERVICE_IP=172.31.0.1
CNI_NETWORK=merak-real-cluster
CNI_BRIDGE=merakrc0
PAUSE_IMAGE=localhost/merak-real-cluster/pause:1.0
APISERVER=https://127.0.0.1:6443

# The sysctls the kubelet (and the bridge plugin's gateway) change on the host:
# recorded at up, restored at down.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward)

# The node is named after the host, as the kubelet would name it.
NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')

log() { printf 'real-cluster: %s\n' "$*"; }

# Seconds since $1 (a `date +%s.%N`), with tenths.
elapsed() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# Whether containerd answers on our socket (ctr against a dead socket hangs
# for its dial timeout, so ask with a short one).
containerd_alive() {
    [[ -S $CONTAINERD_SOCK ]] && timeout 5 ctr --address "$CONTAINERD_SOCK" --timeout 3s version >/dev/null 2>&1
}

# An API request as the cluster admin: api GET /api/v1/nodes
api() {
    local method=$1 path=$2
    shift 2
    curl -sS --fail --max-time 10 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        -X "$method" "$@" "$APISERVER$path"
}

# PIDs of our processes named NAME in the pids file, still alive and still
# running the binary recorded for them (a PID may have been reused).
recorded() {
    [[ -f $PIDS ]] || return 0
    local name pid exe
    while read -r name pid exe; do
        [[ $name == "$1" ]] || continue
        [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe"* ]] && echo "$pid"
    done <"$PIDS"
}

# Whether PID runs (an exited one stays a zombie until PID 1 reaps it).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# gone PID...: up to 3 s for exited processes to be reaped too, so that ps
# shows nothing of ours afterwards.
gone() {
    local i p left
    for ((i = 0; i < 15; i++)); do
        left=0
        for p in "$@"; do [[ -e /proc/$p ]] && left=1; done
        ((left)) || return 0
        sleep 0.2
    done
}

# stop PID...: SIGTERM, up to 10 s for them to exit, then SIGKILL.
stop() {
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null
    local i p alive
    for ((i = 0; i < 50; i++)); do
        alive=()
        for p in "$@"; do running "$p" && alive+=("$p"); done
        ((${#alive[@]})) || break
        sleep 0.2
    done
    ((${#alive[@]})) && kill -KILL "${alive[@]}" 2>/dev/null
    gone "$@"
}
