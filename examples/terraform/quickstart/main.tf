# Quickstart: a small emulated data center on this host.
#
#   make quickstart            # builds, installs Terraform if needed, applies this
#   make quickstart-destroy    # removes everything it made
#
# 2 racks of 3 Emulated Physical Machines (EPMs) under two top-of-rack
# vswitches and a core vswitch; each EPM runs a merak-agent in its own
# network namespace. On it, a VPC with two subnets and 12 Emulated VMs, and a
# second VPC with the same CIDR that must stay unreachable from the first.

terraform {
  required_providers {
    merak = {
      source  = "merak/merak"
      version = "0.1.0"
    }
  }
}

variable "name" {
  description = "Topology name; everything on the host is named merak-<name>.*"
  type        = string
  default     = "quickstart"
}

variable "state_dir" {
  description = "Where the local runtime keeps its records, agent sockets and logs."
  type        = string
  default     = "/var/lib/merak"
}

provider "merak" {
  local {
    state_dir = var.state_dir
  }
}

locals {
  # Shared by the topology and its picture (which is then known at plan).
  dc = {
    racks           = 2
    hosts_per_rack  = 3
    data_plane_cidr = "10.0.0.0/24"
  }
}

resource "merak_topology" "dc" {
  name            = var.name
  racks           = local.dc.racks
  hosts_per_rack  = local.dc.hosts_per_rack
  data_plane_cidr = local.dc.data_plane_cidr
}

# A picture of the topology: `make graph` renders it to docs/quickstart.svg.
data "merak_topology_graph" "dc" {
  name            = var.name
  racks           = local.dc.racks
  hosts_per_rack  = local.dc.hosts_per_rack
  data_plane_cidr = local.dc.data_plane_cidr
}

resource "merak_vpc" "blue" {
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.1.0.0/16"
}

resource "merak_subnet" "web" {
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.1.1.0/24"
}

resource "merak_subnet" "db" {
  vpc_id = merak_vpc.blue.id
  name   = "db"
  cidr   = "10.1.2.0/24"
}

resource "merak_evm_group" "web" {
  subnet_id = merak_subnet.web.id
  name      = "web"
  evm_count = 8
}

resource "merak_evm_group" "db" {
  subnet_id = merak_subnet.db.id
  name      = "db"
  evm_count = 4
}

resource "merak_vpc" "red" {
  topology_id = merak_topology.dc.id
  name        = "red"
  cidr        = "10.1.0.0/16"
}

resource "merak_subnet" "red" {
  vpc_id = merak_vpc.red.id
  name   = "web"
  cidr   = "10.1.1.0/24"
}

resource "merak_evm_group" "red" {
  subnet_id = merak_subnet.red.id
  name      = "red"
  evm_count = 3
}

data "merak_pingall" "check" {
  topology_id = merak_topology.dc.id
  depends_on  = [merak_evm_group.web, merak_evm_group.db, merak_evm_group.red]
}

output "pingall" {
  description = "Pings from inside the EVMs: within each VPC all must answer, across VPCs none."
  value       = "${data.merak_pingall.check.replies}/${data.merak_pingall.check.expected_replies} replies, ${data.merak_pingall.check.isolation_kept}/${data.merak_pingall.check.isolation_probes} isolation probes blocked"
}

output "epms" {
  description = "Each EPM's data-plane address and the namespace that holds it."
  value       = { for epm in merak_topology.dc.epms : epm.name => "${epm.ip} in ${epm.namespace}" }
}

output "ready" {
  value = "${merak_topology.dc.ready_epms} of ${merak_topology.dc.hosts} EPMs ready, ${merak_topology.dc.vswitch_count} vswitches, ${merak_topology.dc.link_count} links"
}

output "topology_dot" {
  description = "The topology in Graphviz's language (make graph renders it)."
  value       = data.merak_topology_graph.dc.dot
}
