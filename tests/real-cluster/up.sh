#!/usr/bin/env bash
# Starts a real single-node Kubernetes on this host and leaves it running:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler (built by
# build.sh), Debian's containerd + runc + CNI plugins, and the kubelet.
# Writes target/real-cluster/kubeconfig (cluster admin) and returns once the
# node is Ready and the `default` service account exists.
#
# Every process it starts is recorded in target/real-cluster/pids; logs go to
# target/real-cluster/logs/. If anything fails to start, down.sh is run before
# exiting non-zero, so a failed start leaves nothing behind. Stop with down.sh.
#
# Needs root, Linux with cgroups, and the binaries of build.sh. Listens on
# 127.0.0.1 only (2379-2380 etcd, 6443 apiserver, 10248/10250 kubelet,
# 10257 controller-manager, 10259 scheduler).
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions
source "$(dirname "$0")/common.sh"

t0=$(date +%s.%N)

if [[ $(id -u) != 0 ]]; then
    echo "real-cluster: up.sh needs root (it runs a kubelet and containerd)" >&2
    exit 1
fi

# --- Already up, or the leftovers of a start that did not finish? ---------
if [[ -s $PIDS ]]; then
    all_alive=1
    while read -r _ pid _; do
        kill -0 "$pid" 2>/dev/null || all_alive=0
    done <"$PIDS"
    if ((all_alive)) && api GET "/api/v1/nodes/$NODE_NAME" >/dev/null 2>&1; then
        log "already running (KUBECONFIG=$KUBECONFIG_ADMIN); stop it with down.sh"
        exit 0
    fi
    log "cleaning up what an earlier run left"
    "$REAL_CLUSTER_DIR/down.sh"
fi

# --- Host packages ----------------------------------------------------------
# containerd 1.6 from Debian: its shim, runc 1.1 and the CNI plugins in
# /usr/lib/cni are what this was checked with (crun does not work here).
missing=()
for need in containerd:containerd containerd-shim-runc-v2:containerd runc:runc ctr:containerd \
    openssl:openssl curl:curl gcc:gcc buildah:buildah python3:python3 nft:nftables; do
    command -v "${need%%:*}" >/dev/null || missing+=("${need#*:}")
done
for plugin in bridge host-local loopback; do
    [[ -x /usr/lib/cni/$plugin ]] || missing+=(containernetworking-plugins)
done
[[ -e /usr/lib/x86_64-linux-gnu/libc.a || -e /usr/lib/libc.a ]] || missing+=(libc6-dev)
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    [[ -x $BIN/$b ]] || { echo "real-cluster: $BIN/$b is missing: run tests/real-cluster/build.sh" >&2; exit 1; }
done

for port in 2379 2380 6443 10248 10250 10257 10259; do
    if [[ -n $(ss -Htln "sport = :$port") ]]; then
        echo "real-cluster: port $port is already in use on this host:" >&2
        ss -tlnp "sport = :$port" >&2
        exit 1
    fi
done

# --- From here on, a failure tears down what was started ------------------
mkdir -p "$STATE" "$LOGS" "$PKI" "$RUN" "$STATE/config"
rm -f "$LOGS"/*.log
: >"$PIDS"
failing=setup
fail() {
    local what=$1 why=$2
    trap - ERR
    echo "real-cluster: $what failed: $why" >&2
    if [[ -s $LOGS/$what.log ]]; then
        echo "---- last lines of $LOGS/$what.log:" >&2
        tail -n 25 "$LOGS/$what.log" >&2
        echo "----" >&2
    fi
    # Keep the logs for reading: down.sh leaves logs/ in place.
    "$REAL_CLUSTER_DIR/down.sh" >&2 || true
    exit 1
}
trap 'fail "$failing" "command at line $LINENO exited with status $?"' ERR

# What the kubelet and the bridge plugin will change, to restore at down.
for s in "${SYSCTLS[@]}"; do
    printf '%s %s\n' "$s" "$(sysctl -n "$s")"
done >"$STATE/sysctls"
# The pod network namespaces already here (another tool's): down.sh leaves them.
# The nftables tables already here: down.sh removes only those the kubelet
# made (iptables-nft tables with nothing but its chains left).
nft list tables >"$STATE/nft-before" 2>/dev/null || true
find /run/netns -maxdepth 1 -name 'cni-*' -printf '%f\n' 2>/dev/null >"$STATE/netns-before" || true

# start NAME COMMAND...: run in its own session (so an interrupted make does
# not take it down), log to logs/NAME.log, record "NAME PID EXE" and the
# command line (for restart.sh).
start() {
    local name=$1
    shift
    mkdir -p "$COMMANDS"
    printf '%s\0' "$@" >"$COMMANDS/$name"
    setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
    echo "$name $! $1" >>"$PIDS"
}

# wait_for NAME SECONDS COMMAND...: until COMMAND succeeds; fails if NAME's
# process exits first or time runs out.
wait_for() {
    local name=$1 limit=$2
    shift 2
    local pid deadline
    pid=$(awk -v n="$name" '$1 == n { print $2 }' "$PIDS")
    deadline=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            fail "$name" "the process exited"
        fi
        if (($(date +%s) >= deadline)); then
            fail "$name" "not ready after ${limit}s"
        fi
        sleep 0.2
    done
}

# --- Certificates (a fresh CA per run, EC P-256 keys) ----------------------
failing=certificates
ssl() { openssl "$@" 2>>"$LOGS/certificates.log"; }
ssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj /CN=merak-real-cluster-ca -keyout "$PKI/ca.key" -out "$PKI/ca.crt"
# cert NAME SUBJECT EXTENDED-KEY-USAGE [SUBJECT-ALT-NAMES]
cert() {
    ssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr"
    {
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature, keyEncipherment"
        echo "extendedKeyUsage = $3"
        [[ -z ${4:-} ]] || echo "subjectAltName = $4"
    } >"$PKI/$1.ext"
    ssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 365 -extfile "$PKI/$1.ext" -out "$PKI/$1.crt"
    rm -f "$PKI/$1.csr" "$PKI/$1.ext"
}
cert apiserver /CN=kube-apiserver serverAuth \
    "DNS:localhost, DNS:$NODE_NAME, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:$FIRST_SERVICE_IP"
cert admin "/O=system:masters/CN=real-cluster-admin" clientAuth
# The apiserver's client certificate towards the kubelet (exec, logs,
# port-forward): the kubelet asks the apiserver whether it may (webhook).
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert controller-manager /CN=system:kube-controller-manager clientAuth
cert scheduler /CN=system:kube-scheduler clientAuth
# The Node authorizer knows the kubelet by this name and group.
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
# Service-account tokens: the apiserver signs, the controller-manager too.
ssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
ssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
chmod 600 "$PKI"/*.key

# kubeconfig FILE USER: certificates embedded, so the file stands alone.
kubeconfig() {
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: real-cluster
  cluster:
    server: $APISERVER
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$2.crt")
    client-key-data: $(base64 -w0 "$PKI/$2.key")
contexts:
- name: real-cluster
  context:
    cluster: real-cluster
    user: $2
current-context: real-cluster
EOF
    chmod 600 "$1"
}
kubeconfig "$KUBECONFIG_ADMIN" admin
for c in controller-manager scheduler kubelet; do
    kubeconfig "$STATE/config/$c.kubeconfig" "$c"
done

# --- containerd (our own config, root, state and socket) ------------------
failing=containerd
mkdir -p "$RUN/cni/net.d" "$CONTAINERD_ROOT" "$CONTAINERD_STATE"
# A bridge with host-local addresses; the bridge holds the gateway address so
# the host reaches pods. No masquerading: nothing outside is reachable anyway,
# and it would add iptables rules to clean up.
cat >"$RUN/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$RUN/cni/ipam"
      }
    }
  ]
}
EOF
# Version 2 is the config format of containerd 1.6 (Debian 12's).
cat >"$STATE/config/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
# "opt" would create /opt/containerd; the others are snapshotters not used here.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without this every sandbox fails ("can't get final child's PID from
  # pipe: EOF"): this VM lacks CAP_SYS_RESOURCE, so runc cannot set the
  # sandbox's oom_score_adj of -998.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$RUN/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    # Our own directory: /etc/cni/net.d holds podman's bridge config.
    conf_dir = "$RUN/cni/net.d"
    max_conf_num = 1
EOF
start containerd "$(command -v containerd)" --config "$STATE/config/containerd.toml"
wait_for containerd 30 containerd_alive

# The sandbox image, and the agent image of `make agent-image` when built.
failing=images
"$REAL_CLUSTER_DIR/images/build.sh" pause >>"$LOGS/images.log" 2>&1
"$REAL_CLUSTER_DIR/import-image.sh" "$STATE/images/pause.oci.tar" >>"$LOGS/images.log" 2>&1
for archive in "$ROOT"/target/merak-agent-*.oci.tar; do
    [[ -f $archive ]] || continue
    "$REAL_CLUSTER_DIR/import-image.sh" "$archive" >>"$LOGS/images.log" 2>&1
    log "imported $(basename "$archive")"
done

# --- etcd -----------------------------------------------------------------
failing=etcd
start etcd "$BIN/etcd" --name real-cluster --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster real-cluster=http://127.0.0.1:2380 --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -sf --max-time 2 http://127.0.0.1:2379/health

# --- kube-apiserver ---------------------------------------------------------
failing=kube-apiserver
# --endpoint-reconciler-type=none: else it writes its loopback address into
# the `kubernetes` Endpoints, which refuses loopback addresses.
# Hostname first: the node's InternalIP is eth0's, the kubelet listens on
# 127.0.0.1, and the hostname resolves there.
start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=6443 \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=Hostname,InternalIP \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --endpoint-reconciler-type=none \
    --cert-dir="$STATE/apiserver"
wait_for kube-apiserver 60 api GET /readyz
t_api=$(elapsed "$t0")

# --- controller-manager and scheduler --------------------------------------
failing=kube-controller-manager
# nodeipam off: the pod network's addresses come from host-local, not from
# a podCIDR per node.
start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$STATE/config/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/config/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/config/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --controllers='*,-nodeipam' --use-service-account-credentials \
    --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --cert-dir="$STATE/controller-manager"
failing=kube-scheduler
start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$STATE/config/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/config/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/config/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --cert-dir="$STATE/scheduler"

# --- kubelet ------------------------------------------------------------------
failing=kubelet
cat >"$STATE/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# This host has cgroups v1 (hybrid) and no systemd as PID 1.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
# A small test machine: do not evict over disk or memory others use.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
# The images were imported by hand and cannot be pulled again: never GC them.
imageGCHighThresholdPercent: 100
# As many pods as one node holds here (bench-kubernetes real): past about a
# thousand the host's neighbour table (gc_thresh3 1024) would need raising.
maxPods: 1000
serializeImagePulls: false
EOF
start kubelet "$BIN/kubelet" --config="$STATE/config/kubelet.yaml" \
    --kubeconfig="$STATE/config/kubelet.kubeconfig" --hostname-override="$NODE_NAME"

node_ready() {
    api GET "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
node = json.load(sys.stdin)
ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
sys.exit(0 if ready and ready[0]["status"] == "True" else 1)'
}
wait_for kubelet 120 node_ready
t_node=$(elapsed "$t0")
# Pods in `default` need its service account (made by the controller-manager).
failing=kube-controller-manager
wait_for kube-controller-manager 60 api GET /api/v1/namespaces/default/serviceaccounts/default
for name in kube-scheduler kubelet; do
    pid=$(awk -v n="$name" '$1 == n { print $2 }' "$PIDS")
    kill -0 "$pid" 2>/dev/null || fail "$name" "the process exited"
done
trap - ERR

log "up in $(elapsed "$t0") s (apiserver ready at $t_api s, node Ready at $t_node s)"
log "export KUBECONFIG=$KUBECONFIG_ADMIN    # stop with: make real-cluster-down"
