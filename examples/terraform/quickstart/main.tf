# Quickstart: a small emulated data center on this host.
#
#   make quickstart            # builds, installs Terraform if needed, applies this
#   make quickstart-destroy    # removes everything it made
#
# 2 racks of 3 Emulated Physical Machines (EPMs) under two top-of-rack
# vswitches and a core vswitch; each EPM runs a merak-agent in its own
# network namespace.

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

resource "merak_topology" "dc" {
  name            = var.name
  racks           = 2
  hosts_per_rack  = 3
  data_plane_cidr = "10.0.0.0/24"
}

output "epms" {
  description = "Each EPM's data-plane address and the namespace that holds it."
  value       = { for epm in merak_topology.dc.epms : epm.name => "${epm.ip} in ${epm.namespace}" }
}

output "ready" {
  value = "${merak_topology.dc.ready_epms} of ${merak_topology.dc.hosts} EPMs ready, ${merak_topology.dc.vswitch_count} vswitches, ${merak_topology.dc.link_count} links"
}
