# A tenant: one VPC with a web and a db subnet, and a group of EVMs in each.
# Called by the scenarios with different sizes.

terraform {
  required_providers {
    merak = { source = "merak/merak" }
  }
}

variable "topology_id" {
  description = "The merak_topology to build on."
  type        = string
}

variable "name" {
  description = "Tenant (VPC) name; also prefixes its EVM group names."
  type        = string
}

variable "cidr" {
  description = "The VPC's prefix, a /16; web gets its .1.0/24 and db its .2.0/24."
  type        = string
}

variable "web_evms" {
  type    = number
  default = 4
}

variable "db_evms" {
  type    = number
  default = 2
}

resource "merak_vpc" "this" {
  topology_id = var.topology_id
  name        = var.name
  cidr        = var.cidr
}

resource "merak_subnet" "web" {
  vpc_id = merak_vpc.this.id
  name   = "web"
  cidr   = cidrsubnet(var.cidr, 8, 1)
}

resource "merak_subnet" "db" {
  vpc_id = merak_vpc.this.id
  name   = "db"
  cidr   = cidrsubnet(var.cidr, 8, 2)
}

resource "merak_evm_group" "web" {
  subnet_id = merak_subnet.web.id
  name      = "${var.name}-web"
  evm_count = var.web_evms
}

resource "merak_evm_group" "db" {
  subnet_id = merak_subnet.db.id
  name      = "${var.name}-db"
  evm_count = var.db_evms
}

output "groups" {
  description = "The tenant's EVM groups, for depends_on."
  value       = [merak_evm_group.web.id, merak_evm_group.db.id]
}

output "evms" {
  value = merak_evm_group.web.ready_count + merak_evm_group.db.ready_count
}
