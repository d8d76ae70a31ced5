# The same tenant module at scale: 3 tenants of 400 EVMs each on 32 EPMs.

terraform {
  required_providers {
    merak = { source = "merak/merak" }
  }
}

variable "name" {
  type    = string
  default = "large"
}

variable "state_dir" {
  type    = string
  default = "/var/lib/merak"
}

variable "web_evms" {
  type    = number
  default = 300
}

provider "merak" {
  local {
    state_dir = var.state_dir
  }
}

resource "merak_topology" "dc" {
  name            = var.name
  racks           = 4
  hosts_per_rack  = 8
  data_plane_cidr = "10.251.0.0/24"
}

module "tenant" {
  for_each    = { a = "10.1.0.0/16", b = "10.2.0.0/16", c = "10.1.0.0/16" }
  source      = "../../modules/tenant"
  topology_id = merak_topology.dc.id
  name        = each.key
  cidr        = each.value
  web_evms    = var.web_evms
  db_evms     = 100
}

data "merak_pingall" "check" {
  topology_id = merak_topology.dc.id
  samples     = 20
  depends_on  = [module.tenant]
}

output "evms" {
  value = sum([for t in module.tenant : t.evms])
}

output "pingall" {
  value = "${data.merak_pingall.check.replies}/${data.merak_pingall.check.expected_replies} replies, ${data.merak_pingall.check.isolation_kept}/${data.merak_pingall.check.isolation_probes} isolation probes blocked"
}
