#!/usr/bin/env bash
# Checks a running real cluster (make real-cluster) the way a user would:
# the node is Ready on containerd, a pod from a locally built busybox image
# runs, `kubectl exec` and `kubectl logs` work, and the pod reaches the host
# over the pod network. Deletes its pod again. Needs kubectl.
set -euo pipefail
source "$(dirname "$0")/common.sh"
export KUBECONFIG=$KUBECONFIG_ADMIN
command -v kubectl >/dev/null || { echo "smoke-test.sh: kubectl is missing" >&2; exit 1; }

t0=$(date +%s.%N)
kubectl get nodes -o wide
runtime=$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')
[[ $runtime == containerd://* ]] || { echo "unexpected runtime: $runtime" >&2; exit 1; }

archive=$("$REAL_CLUSTER_DIR/images/build.sh" busybox)
"$REAL_CLUSTER_DIR/import-image.sh" "$archive" >/dev/null

kubectl delete pod smoke --ignore-not-found --grace-period=0 --force >/dev/null 2>&1
kubectl apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: smoke
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: busybox
    image: localhost/merak-real-cluster/busybox:1.0
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo hello from the real cluster; exec sleep 3600"]
YAML
kubectl wait --for=condition=Ready pod/smoke --timeout=60s
kubectl get pod smoke -o wide
echo "== exec:"
# shellcheck disable=SC2016  # expanded inside the pod
kubectl exec smoke -- sh -c 'echo "inside $(hostname)"; ip -4 -o addr show eth0'
echo "== logs:"
logs=$(kubectl logs smoke)
echo "$logs"
[[ $logs == "hello from the real cluster" ]]
echo "== the pod pings the host's end of the pod network:"
gateway=$(kubectl exec smoke -- ip route | awk '/^default/ { print $3 }')
kubectl exec smoke -- ping -c 1 -W 2 "$gateway" | tail -n 2
kubectl delete pod smoke --grace-period=1 --wait=true >/dev/null
echo "smoke test passed in $(elapsed "$t0") s"
