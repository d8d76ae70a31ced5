#!/bin/bash
# One OVN chassis on Open vSwitch's userspace datapath, for an epm_agent:
# ovsdb-server, ovs-vswitchd and ovn-controller, run in the foreground inside
# the EPM's network namespace, stopped together.
#
#   ovn-chassis.sh EPM SB_REMOTE DIR [ENCAP]
#     EPM        the EPM's name (the chassis' system-id), e.g. ${epm}
#     SB_REMOTE  the southbound database, e.g. unix:/var/lib/ovn-lab/sb.sock
#     DIR        where the chassis keeps its database, sockets and logs:
#                DIR/EPM/{run,db,log} (the adapter finds its ovsdb there)
#     ENCAP      geneve (default) or vxlan
#
# The userspace datapath needs no kernel module. It routes tunnels itself,
# through an Open vSwitch bridge: eth1 becomes a port of br-phy, and the
# EPM's data-plane address moves from eth1 to br-phy (merak counts the EPM
# healthy while some device of it holds the address).
set -u
EPM=$1 SB=$2 BASE=$3 ENCAP=${4:-geneve}
D=$BASE/$EPM
mkdir -p "$D/run" "$D/db" "$D/log"
# Every default path of the ovs and ovn tools inside $D: namespaces do not
# separate unix sockets or pid files, and every EPM runs the same daemons.
export OVS_RUNDIR=$D/run OVS_DBDIR=$D/db OVS_LOGDIR=$D/log OVS_SYSCONFDIR=$D/etc \
       OVN_RUNDIR=$D/run OVN_DBDIR=$D/db OVN_LOGDIR=$D/log OVN_SYSCONFDIR=$D/etc
DB=unix:$D/run/db.sock
say() { echo "[$(date +%T.%3N)] $EPM: $*"; }

CHILDREN=()
stop() {
  trap - TERM INT EXIT
  for ((i=${#CHILDREN[@]}-1; i>=0; i--)); do kill -TERM "${CHILDREN[i]}" 2>/dev/null; done
  wait
  # br-phy went with ovs-vswitchd: the address goes back where merak put it.
  [ -n "${ADDRESS:-}" ] && ip addr replace "$ADDRESS" dev eth1 2>/dev/null
  say "stopped"
  exit 0
}
trap stop TERM INT EXIT

# The address merak gave eth1 (or that an earlier run moved to br-phy).
ADDRESS=$(ip -4 -o addr show dev eth1 | awk '{print $4; exit}')
[ -n "$ADDRESS" ] || ADDRESS=$(ip -4 -o addr show dev br-phy 2>/dev/null | awk '{print $4; exit}')
[ -n "$ADDRESS" ] || { say "eth1 has no address"; exit 1; }

[ -f "$D/db/conf.db" ] || ovsdb-tool create "$D/db/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server "$D/db/conf.db" --remote="punix:$D/run/db.sock" --pidfile --log-file="$D/log/ovsdb-server.log" -vconsole:off &
CHILDREN+=($!)
for _ in $(seq 100); do [ -S "$D/run/db.sock" ] && break; sleep 0.05; done
ovs-vsctl --db="$DB" --no-wait init
ovs-vswitchd "$DB" --pidfile --log-file="$D/log/ovs-vswitchd.log" -vconsole:off &
CHILDREN+=($!)

ovs-vsctl --db="$DB" --timeout=20 \
  -- --may-exist add-br br-phy -- set bridge br-phy datapath_type=netdev \
  -- --may-exist add-port br-phy eth1 \
  -- --may-exist add-br br-int -- set bridge br-int datapath_type=netdev fail_mode=secure other_config:disable-in-band=true \
  -- set open . external_ids:system-id="$EPM" external_ids:hostname="$EPM" external_ids:ovn-remote="$SB" \
       external_ids:ovn-encap-type="$ENCAP" external_ids:ovn-encap-ip="${ADDRESS%/*}" external_ids:ovn-bridge-datapath-type=netdev
for _ in $(seq 100); do ip link show br-phy >/dev/null 2>&1 && break; sleep 0.05; done
# Without this, every encapsulated packet is dropped, silently ("native
# tunnel routing failed"): the tunnel's route must leave through an OVS bridge.
ip addr del "$ADDRESS" dev eth1 2>/dev/null
ip addr replace "$ADDRESS" dev br-phy
ip link set br-phy up

ovn-controller "$DB" --pidfile --log-file="$D/log/ovn-controller.log" -vconsole:off &
CHILDREN+=($!)
say "chassis up: ovsdb-server ${CHILDREN[0]}, ovs-vswitchd ${CHILDREN[1]}, ovn-controller ${CHILDREN[2]}, $ENCAP from ${ADDRESS%/*}"
# One daemon ending ends the chassis: the supervisor starts it anew.
wait -n
say "a daemon exited"
stop
