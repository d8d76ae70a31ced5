# Security groups as a cloud tenant declares them: operators reach the web
# tier over SSH only from the bastion hosts, web hosts ping each other,
# and the database tier (in no group: the VPC's implicit `default`)
# answers only its own. Each EPM's agent enforces the groups in the VPC's
# router namespace (nftables, stateful); merak_pingall says which probes
# the groups allow and which they block, and checks both.
#
#   terraform apply                        # the policy below
#   terraform apply -var ssh_port=2222     # a rule edited in place: no EVM rebuilt
#   terraform apply -var bastions=2        # the SSH rule follows the bastion group

terraform {
  required_providers {
    merak = { source = "merak/merak" }
  }
}

variable "name" {
  type    = string
  default = "shop"
}

variable "state_dir" {
  type    = string
  default = "/var/lib/merak"
}

variable "ssh_port" {
  type    = number
  default = 22
}

variable "bastions" {
  type    = number
  default = 1
}

provider "merak" {
  local {
    state_dir = var.state_dir
  }
}

resource "merak_topology" "dc" {
  name            = var.name
  racks           = 1
  hosts_per_rack  = 2
  data_plane_cidr = "10.252.0.0/24"
}

resource "merak_vpc" "shop" {
  topology_id = merak_topology.dc.id
  name        = "shop"
  cidr        = "10.10.0.0/16"
}

resource "merak_subnet" "front" {
  vpc_id = merak_vpc.shop.id
  name   = "front"
  cidr   = "10.10.1.0/24"
}

resource "merak_subnet" "back" {
  vpc_id = merak_vpc.shop.id
  name   = "back"
  cidr   = "10.10.2.0/24"
}

resource "merak_security_group" "bastion" {
  vpc_id      = merak_vpc.shop.id
  name        = "bastion"
  description = "Operators' jump hosts"

  ingress {
    protocol = "icmp"
    self     = true
  }

  egress {
    protocol    = "all"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "merak_security_group" "web" {
  vpc_id      = merak_vpc.shop.id
  name        = "web"
  description = "SSH from the bastions, ping among web hosts"

  ingress {
    protocol                  = "tcp"
    from_port                 = var.ssh_port
    source_security_group_ids = [merak_security_group.bastion.id]
  }

  ingress {
    protocol = "icmp"
    self     = true
  }

  egress {
    protocol    = "all"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "merak_evm_group" "bastion" {
  subnet_id          = merak_subnet.front.id
  name               = "bastion"
  evm_count          = var.bastions
  security_group_ids = [merak_security_group.bastion.id]
}

resource "merak_evm_group" "web" {
  subnet_id          = merak_subnet.front.id
  name               = "web"
  evm_count          = 2
  security_group_ids = [merak_security_group.web.id]
}

# In no group: the VPC's default group (egress anywhere, ingress from its own).
resource "merak_evm_group" "db" {
  subnet_id = merak_subnet.back.id
  name      = "db"
  evm_count = 2
}

# A denied probe waits its whole timeout: 1 s keeps the check short here.
data "merak_pingall" "policy" {
  topology_id = merak_topology.dc.id
  timeout_ms  = 1000
  depends_on  = [merak_evm_group.bastion, merak_evm_group.web, merak_evm_group.db]
}

output "pingall" {
  value = "${data.merak_pingall.policy.replies}/${data.merak_pingall.policy.expected_replies} reachable as declared, ${data.merak_pingall.policy.denied_kept}/${data.merak_pingall.policy.denied_probes} blocked as declared, ${data.merak_pingall.policy.unexpected} unexpected"
}

output "failures" {
  value = data.merak_pingall.policy.failures
}
