# OVN as the system under test: an OVN chassis (ovsdb-server, ovs-vswitchd
# on the userspace datapath, ovn-controller) in every EPM as an epm_agent,
# and examples/controllers/ovn/adapter.py as the external controller (OVN's
# databases and northd, and merak's controller API). Start the adapter first:
#
#   examples/controllers/ovn/adapter.py --dir /var/lib/ovn-lab --listen 127.0.0.1:8080
#   terraform apply -var ovn_dir=/var/lib/ovn-lab
#
# Then merak_pingall is the verdict on OVN: EVMs of one VPC reach each other
# across EPMs through OVN's tunnels, and other VPCs do not. With
# -var security_groups=true the web tier answers only itself (ICMP and TCP
# 7001) and OVN enforces that with port groups and ACLs: pingall's policy
# output says whether it did.

terraform {
  required_providers {
    merak = { source = "merak/merak" }
  }
}

variable "name" {
  type    = string
  default = "ovn"
}

variable "state_dir" {
  type    = string
  default = "/var/lib/merak"
}

variable "controller_url" {
  type    = string
  default = "http://127.0.0.1:8080"
}

variable "ovn_dir" {
  type        = string
  description = "The adapter's --dir: its southbound database and the chassis' state."
  default     = "/var/lib/ovn-lab"
}

variable "chassis_script" {
  type    = string
  default = "/usr/local/share/merak/ovn-chassis.sh"
}

variable "web_count" {
  type    = number
  default = 4
}

variable "security_groups" {
  type    = bool
  default = false
}

provider "merak" {
  local {
    state_dir = var.state_dir
  }
  controller {
    url = var.controller_url
  }
}

resource "merak_topology" "dc" {
  name            = var.name
  racks           = 1
  hosts_per_rack  = 2
  data_plane_cidr = "10.81.0.0/24"

  epm_agent {
    name          = "ovn"
    command       = [var.chassis_script, "$${epm}", "unix:${var.ovn_dir}/sb.sock", "${var.ovn_dir}/chassis"]
    ready_command = ["ovs-vsctl", "--db=unix:${var.ovn_dir}/chassis/$${epm}/run/db.sock", "--timeout=2", "br-exists", "br-int"]
  }
}

resource "merak_vpc" "blue" {
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.50.0.0/16"
  controller  = "external"
  mtu         = 1400 # OVN's Geneve header (58 bytes) must fit the 1500-byte data plane
}

resource "merak_subnet" "web" {
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.50.1.0/24"
}

resource "merak_subnet" "db" {
  vpc_id = merak_vpc.blue.id
  name   = "db"
  cidr   = "10.50.2.0/24"
}

resource "merak_security_group" "web" {
  count  = var.security_groups ? 1 : 0
  vpc_id = merak_vpc.blue.id
  name   = "web"

  ingress {
    protocol = "icmp"
    self     = true
  }

  ingress {
    protocol  = "tcp"
    from_port = 7001
    self      = true
  }

  egress {
    protocol    = "all"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "merak_evm_group" "web" {
  subnet_id          = merak_subnet.web.id
  name               = "web"
  evm_count          = var.web_count
  security_group_ids = merak_security_group.web[*].id
}

resource "merak_evm_group" "db" {
  subnet_id = merak_subnet.db.id
  name      = "db"
  evm_count = 2
}

# Same addresses as blue's web subnet, in another VPC: OVN must keep it apart.
resource "merak_vpc" "red" {
  topology_id = merak_topology.dc.id
  name        = "red"
  cidr        = "10.50.0.0/16"
  controller  = "external"
  mtu         = 1400 # OVN's Geneve header (58 bytes) must fit the 1500-byte data plane
}

resource "merak_subnet" "red" {
  vpc_id = merak_vpc.red.id
  name   = "web"
  cidr   = "10.50.1.0/24"
}

resource "merak_evm_group" "red" {
  subnet_id = merak_subnet.red.id
  name      = "red"
  evm_count = 2
}

data "merak_pingall" "all" {
  topology_id = merak_topology.dc.id
  depends_on  = [merak_evm_group.web, merak_evm_group.db, merak_evm_group.red]
}

output "pingall" {
  value = "${data.merak_pingall.all.replies}/${data.merak_pingall.all.expected_replies} replies, ${data.merak_pingall.all.isolation_kept}/${data.merak_pingall.all.isolation_probes} isolation probes blocked, ${data.merak_pingall.all.unexpected} unexpected"
}

output "policy" {
  value = "${data.merak_pingall.all.denied_kept}/${data.merak_pingall.all.denied_probes} denied as declared"
}
