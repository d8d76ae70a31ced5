#!/usr/bin/env bash
# Restarts one process of the running real cluster with the command line
# up.sh started it with, as an operator restarting a node's service would:
# SIGTERM (SIGKILL after 10 s), start again, wait until it serves.
#
#   tests/real-cluster/restart.sh containerd|kubelet|kube-apiserver|...
#
# containerd's shims and so the pods' containers outlive containerd; the
# kubelet finds its pods again through the CRI when it comes back.
set -euo pipefail
source "$(dirname "$0")/common.sh"

name=${1:?usage: restart.sh containerd|kubelet|kube-apiserver|kube-controller-manager|kube-scheduler|etcd}
[[ -f $COMMANDS/$name ]] || { echo "restart.sh: no $name started by up.sh is recorded (is the cluster up?)" >&2; exit 1; }
mapfile -d '' -t command <"$COMMANDS/$name"

t0=$(date +%s.%N)
mapfile -t pids < <(recorded "$name")
stop "${pids[@]}"
setsid "${command[@]}" </dev/null >>"$LOGS/$name.log" 2>&1 &
pid=$!
# The pids file names the new process in place of the old.
awk -v n="$name" -v p="$pid" -v e="${command[0]}" '$1 == n { $0 = n " " p " " e } { print }' "$PIDS" >"$PIDS.new"
mv "$PIDS.new" "$PIDS"

serving() {
    case $name in
        containerd) containerd_alive ;;
        kubelet) curl -sf --max-time 2 http://127.0.0.1:10248/healthz >/dev/null ;;
        etcd) curl -sf --max-time 2 http://127.0.0.1:2379/health >/dev/null ;;
        *) api GET /readyz >/dev/null 2>&1 ;;
    esac
}
deadline=$((SECONDS + 60))
until serving; do
    running "$pid" || { echo "restart.sh: $name exited; last lines of $LOGS/$name.log:" >&2; tail -n 20 "$LOGS/$name.log" >&2; exit 1; }
    ((SECONDS < deadline)) || { echo "restart.sh: $name does not serve 60 s after its restart" >&2; exit 1; }
    sleep 0.2
done
log "$name restarted in $(elapsed "$t0") s (pid $pid)"
