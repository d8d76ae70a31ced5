# A k = 4 fat tree (Al-Fares et al.): 4 pods of 2 edge and 2 aggregation
# routers, 4 core routers, 16 EPMs; every link a routed /31, flows between
# pods spread over all four cores (ECMP, hashed on ports). A tenant VPC
# runs over it unchanged. merak_pingall checks the underlay (EPM to EPM)
# and the overlay (EVM to EVM). With cut_core = true a merak_fault holds
# core-0 down (every link of it): the pods still reach each other over the
# other three cores.

terraform {
  required_providers {
    merak = { source = "merak/merak" }
  }
}

variable "name" {
  type    = string
  default = "fabric"
}

variable "state_dir" {
  type    = string
  default = "/var/lib/merak"
}

variable "k" {
  type    = number
  default = 4
}

variable "hosts" {
  description = "EPMs to plug in: up to k³/4 (null: all of them)."
  type        = number
  default     = null
}

variable "core_rate_mbit" {
  description = "Shape every aggregation-to-core link to this rate (null: unshaped)."
  type        = number
  default     = null
}

variable "cut_core" {
  description = "Hold core-0's links down with a merak_fault."
  type        = bool
  default     = false
}

provider "merak" {
  local {
    state_dir = var.state_dir
  }
}

resource "merak_topology" "dc" {
  name            = var.name
  type            = "fat_tree"
  k               = var.k
  hosts           = var.hosts
  data_plane_cidr = "10.251.0.0/16"

  dynamic "link_profile" {
    for_each = var.core_rate_mbit == null ? [] : [var.core_rate_mbit]
    content {
      role      = "aggregation_core"
      rate_mbit = link_profile.value
    }
  }
}

resource "merak_fault" "core" {
  count       = var.cut_core ? 1 : 0
  topology_id = merak_topology.dc.id
  name        = "core-0-down"
  nodes       = ["core-0"]
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

resource "merak_evm_group" "web" {
  subnet_id = merak_subnet.web.id
  name      = "web"
  evm_count = 16
}

data "merak_pingall" "underlay" {
  topology_id = merak_topology.dc.id
  scope       = "underlay"
  depends_on  = [merak_topology.dc, merak_fault.core]
}

data "merak_pingall" "overlay" {
  topology_id = merak_topology.dc.id
  depends_on  = [merak_evm_group.web]
}

output "fabric" {
  value = "${merak_topology.dc.ready_epms} EPMs ready, ${merak_topology.dc.vswitch_count} switches, ${merak_topology.dc.link_count} links, fabric ${merak_topology.dc.fabric_cidr}"
}

output "down_links" {
  value = length(merak_fault.core) == 0 ? 0 : length(merak_fault.core[0].down_links)
}

output "impaired" {
  value = merak_topology.dc.impaired_links
}

output "underlay" {
  value = "${data.merak_pingall.underlay.replies}/${data.merak_pingall.underlay.expected_replies}"
}

output "overlay" {
  value = "${data.merak_pingall.overlay.replies}/${data.merak_pingall.overlay.expected_replies}"
}
