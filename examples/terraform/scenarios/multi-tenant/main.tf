# Two tenants whose VPCs use the same CIDR, on a 2-rack tree: traffic flows
# inside each tenant and never between them, which merak_pingall checks.

terraform {
  required_providers {
    merak = { source = "merak/merak" }
  }
}

variable "name" {
  type    = string
  default = "tenants"
}

variable "state_dir" {
  type    = string
  default = "/var/lib/merak"
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
  data_plane_cidr = "10.250.0.0/24"
}

module "blue" {
  source      = "../../modules/tenant"
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.0.0.0/16"
  web_evms    = 6
  db_evms     = 3
}

module "red" {
  source      = "../../modules/tenant"
  topology_id = merak_topology.dc.id
  name        = "red"
  cidr        = "10.0.0.0/16"
}

data "merak_pingall" "check" {
  topology_id = merak_topology.dc.id
  depends_on  = [module.blue, module.red]
}

output "evms" {
  value = module.blue.evms + module.red.evms
}

output "pingall" {
  value = "${data.merak_pingall.check.replies}/${data.merak_pingall.check.expected_replies} replies, ${data.merak_pingall.check.isolation_kept}/${data.merak_pingall.check.isolation_probes} isolation probes blocked"
}
