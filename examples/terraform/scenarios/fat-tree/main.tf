# A k = 4 fat tree (Al-Fares et al.): 4 pods of 2 edge and 2 aggregation
# routers, 4 core routers, 16 EPMs; every link a routed /31, flows between
# pods spread over all four cores (ECMP, hashed on ports). A tenant VPC
# runs over it unchanged. merak_pingall checks the underlay (EPM to EPM)
# and the overlay (EVM to EVM).

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
  depends_on  = [merak_topology.dc]
}

data "merak_pingall" "overlay" {
  topology_id = merak_topology.dc.id
  depends_on  = [merak_evm_group.web]
}

output "fabric" {
  value = "${merak_topology.dc.ready_epms} EPMs ready, ${merak_topology.dc.vswitch_count} switches, ${merak_topology.dc.link_count} links, fabric ${merak_topology.dc.fabric_cidr}"
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
