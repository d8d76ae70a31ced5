#!/usr/bin/env bash
# Stops the real single-node cluster of up.sh and removes everything it left
# on the host: processes, containers, mounts, network namespaces, the CNI
# bridge and veths, cgroups, the kubelet's iptables chains, changed sysctls
# and state directories. Idempotent, and works after a failed or partial
# start: each step looks at what is there rather than trusting the pids file.
# Keeps target/real-cluster/{bin,images,logs}.
#
# Touches only what is ours: processes recorded in the pids file or running
# our binaries/config/socket, mounts under our directories, cni-* network
# namespaces that were not there before up.sh, the kubepods cgroups.
set -uo pipefail  # no -e: a step that finds nothing to do must not stop the rest
source "$(dirname "$0")/common.sh"

t0=$(date +%s.%N)
[[ $(id -u) == 0 ]] || { echo "real-cluster: down.sh needs root" >&2; exit 1; }
mkdir -p "$LOGS"
# Each step's start time goes to logs/down.log (what took long, if it did).
step() { printf '%6s s  %s\n' "$(elapsed "$t0")" "$*" >>"$LOGS/down.log"; }
: >"$LOGS/down.log"

# Processes not in the pids file that are ours all the same (a pids file lost
# or a start cut short): our binaries, a containerd with our config, shims of
# our containerd.
strays() {
    local p exe cmd
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        case $exe in "$BIN"/*) echo "${p#/proc/}"; continue ;; esac
        case $cmd in
            *"$STATE/config/containerd.toml"* | *"-address $CONTAINERD_SOCK"*) echo "${p#/proc/}" ;;
        esac
    done
}

# stop_component NAME...: those named, in parallel.
stop_component() {
    step "stop $*"
    local name pids=()
    for name in "$@"; do mapfile -t -O "${#pids[@]}" pids < <(recorded "$name"); done
    stop "${pids[@]}"
}

apiserver_alive() {
    [[ -f $PKI/admin.key ]] && api GET /readyz >/dev/null 2>&1
}

# --- 1. Pods: deleted through the API, so the kubelet tears their sandboxes
# down properly (CNI DEL: veth, netns, address) while everything still runs.
step "pods"
if apiserver_alive; then
    # Nothing may recreate or schedule pods meanwhile.
    stop_component kube-controller-manager kube-scheduler
    namespaces=$(api GET /api/v1/namespaces | python3 -c '
import json, sys
print(" ".join(n["metadata"]["name"] for n in json.load(sys.stdin)["items"]))' 2>/dev/null)
    for ns in $namespaces; do
        api DELETE "/api/v1/namespaces/$ns/pods?gracePeriodSeconds=0" >/dev/null 2>&1
    done
    if [[ -n $(recorded kubelet) ]] && containerd_alive; then
        # The kubelet stops them within a few seconds; wait for their tasks.
        for ((i = 0; i < 100; i++)); do
            [[ -z $(ctr_ tasks ls 2>/dev/null | awk '$3 == "RUNNING"') ]] && break
            sleep 0.2
        done
        step "pods: $(ctr_ tasks ls 2>/dev/null | awk '$3 == "RUNNING"' | wc -l) tasks still running"
    fi
fi

# --- 2. The kubelet, then whatever containers are left (only while
# containerd answers: against a dead one each ctr call hangs).
step "kubelet, leftover containers"
stop_component kubelet
sandboxes=
if containerd_alive; then
    # Their CNI result cache entries are not removed when ctr removes them.
    sandboxes=$(ctr_ containers ls -q 2>/dev/null)
    for task in $(ctr_ tasks ls -q 2>/dev/null); do
        ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1
    done
    for task in $(ctr_ tasks ls -q 2>/dev/null); do
        ctr_ tasks rm -f "$task" >/dev/null 2>&1
    done
    for container in $(ctr_ containers ls -q 2>/dev/null); do
        ctr_ containers rm "$container" >/dev/null 2>&1
    done
fi

# --- 3. Control plane, etcd, containerd (by recorded PID), then strays.
step "control plane, etcd, containerd"
stop_component kube-controller-manager kube-scheduler
stop_component kube-apiserver
stop_component etcd containerd
mapfile -t stray < <(strays)
stop "${stray[@]}"

# Anything still in the pods' cgroups (a container whose shim was killed).
cgroup_roots() { findmnt -rn -t cgroup,cgroup2 -o TARGET; }
killed=()
for ((i = 0; i < 3; i++)); do
    mapfile -t procs < <(for r in $(cgroup_roots); do
        [[ -d $r/kubepods ]] && find "$r/kubepods" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u)
    ((${#procs[@]})) || break
    kill -KILL "${procs[@]}" 2>/dev/null
    killed+=("${procs[@]}")
    sleep 0.3
done
# A container whose shim died was reparented to PID 1, which reaps it.
gone "${killed[@]}"

# --- 4. Mounts: under our directories, and pod network namespaces that were
# not there before up.sh (another tool's cni-* stay; merak-* are never ours).
step "mounts"
netns_before=$(cat "$STATE/netns-before" 2>/dev/null)
ours_netns=()
for ns in /run/netns/cni-*; do
    [[ -e $ns ]] || continue
    grep -qxF "$(basename "$ns")" <<<"$netns_before" || ours_netns+=("$ns")
done
for ((i = 0; i < 3; i++)); do
    # Deepest first, so nested mounts come off before their parents.
    # (The kubelet bind-mounts its directory on itself to make it shared.)
    targets=$(findmnt -rn -o TARGET | awk -v s="$STATE/" -v r="$RUN/" -v k="$KUBELET_DIR" '
        index($0, s) == 1 || index($0, r) == 1 || index($0, k "/") == 1 || $0 == k' | sort -r -u)
    for ns in "${ours_netns[@]}"; do
        findmnt -rn -o TARGET | grep -qxF "$ns" && targets+=$'\n'"$ns"
    done
    [[ -z ${targets//$'\n'/} ]] && break
    while read -r t; do
        [[ -n $t ]] && { umount "$t" 2>/dev/null || umount -l "$t" 2>/dev/null; }
    done <<<"$targets"
done
for ns in "${ours_netns[@]}"; do rm -f "$ns"; done

# --- 5. The pod network's bridge and the veths still plugged into it.
step "links"
for veth in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
    ip link delete "$veth" 2>/dev/null
done
ip link delete "$CNI_BRIDGE" 2>/dev/null

# --- 6. The kubepods cgroup trees (children first: rmdir only takes empty ones).
step "cgroups"
for r in $(cgroup_roots); do
    [[ -d $r/kubepods ]] && find "$r/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
done

# --- 7. The kubelet's iptables chains (KUBE-FIREWALL, and canaries for
# kube-proxy), then the iptables-nft tables it made for them when nothing
# else is left in them.
step "iptables"
for ipt in iptables ip6tables; do
    command -v "$ipt-save" >/dev/null || continue
    for table in mangle nat filter; do
        # Read with -save: with the nf_tables backend, other iptables calls
        # create the table they name.
        saved=$("$ipt-save" -t "$table" 2>/dev/null) || continue
        # Jumps into its chains first: a referenced chain cannot be deleted.
        grep -E '^-A [A-Z]+ -j KUBE-(FIREWALL|KUBELET-CANARY|IPTABLES-HINT)$' <<<"$saved" |
            while read -r _ chain _ target; do
                "$ipt" -w 5 -t "$table" -D "$chain" -j "$target"
            done
        for chain in KUBE-FIREWALL KUBE-IPTABLES-HINT KUBE-KUBELET-CANARY; do
            grep -q "^:$chain " <<<"$saved" || continue
            "$ipt" -w 5 -t "$table" -F "$chain" && "$ipt" -w 5 -t "$table" -X "$chain"
        done
    done
done
if command -v nft >/dev/null && [[ -f $STATE/nft-before ]]; then
    nft list tables 2>/dev/null | while read -r _ family name; do
        [[ $family == ip || $family == ip6 ]] || continue
        [[ $name == filter || $name == nat || $name == mangle ]] || continue
        grep -qxF "table $family $name" "$STATE/nft-before" && continue
        # Anything but table/chain headers, hooks and braces is someone's rule or set.
        nft list table "$family" "$name" | grep -qvE '^\s*(table |chain |type |}|#|$)' && continue
        nft delete table "$family" "$name"
    done
fi

# --- 8. Sysctls back as they were before up.sh.
step "sysctls"
if [[ -f $STATE/sysctls ]]; then
    while read -r key value; do
        [[ $(sysctl -n "$key" 2>/dev/null) == "$value" ]] || sysctl -q -w "$key=$value"
    done <"$STATE/sysctls"
fi

# --- 9. State: ours under target/ and /run, the kubelet's, the CNI result
# cache entries of our network, and stale shim sockets of our containerd.
step "state"
rm -rf "$RUN" "$KUBELET_DIR" /var/log/pods /var/log/containers
find "$STATE" -mindepth 1 -maxdepth 1 ! -name bin ! -name images ! -name logs -exec rm -rf {} + 2>/dev/null
rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null
for id in $sandboxes; do rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null; done
# Those of sandboxes containerd could no longer tear down name their netns.
for f in /var/lib/cni/results/*; do
    for ns in "${ours_netns[@]}"; do
        grep -qF "/netns/$(basename "$ns")\"" "$f" 2>/dev/null && rm -f "$f"
    done
done
rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null
# containerd 1.6 puts shim sockets in /run/containerd/s whatever its state
# dir: remove the ones no process listens on any more (ours, now).
if [[ -d /run/containerd/s ]]; then
    listening=$(ss -xlH 2>/dev/null | awk '{ print $5 }')
    for sock in /run/containerd/s/*; do
        [[ -S $sock ]] && ! grep -qxF "$sock" <<<"$listening" && rm -f "$sock"
    done
    rmdir /run/containerd/s /run/containerd 2>/dev/null
fi

step finished
log "down in $(elapsed "$t0") s"
exit 0
