# The quickstart's data center on a Kubernetes cluster: the same resource
# blocks, only the provider block differs. Every EPM and vswitch is a pod
# running merak-agent in namespace merak-<name>; links are tunnels between
# the pods, so any CNI carries them.
#
#   make agent-image    # then push target/merak-agent-0.1.0.oci.tar where the cluster pulls from
#   terraform apply -var agent_image=REGISTRY/merak-agent:0.1.0
#
# The credentials need the rights in examples/kubernetes/rbac.yaml. The
# acceptance tests apply this file against the fake cluster
# (tests/fake-cluster), never a real one.

terraform {
  required_providers {
    merak = {
      source  = "merak/merak"
      version = "0.1.0"
    }
  }
}

variable "name" {
  description = "Topology name; its objects live in namespace merak-<name>."
  type        = string
  default     = "quickstart"
}

variable "kubeconfig" {
  description = "The kubeconfig of the cluster (null: KUBECONFIG, ~/.kube/config, or in-cluster)."
  type        = string
  default     = null
}

variable "agent_image" {
  description = "The merak-agent image `make agent-image` built, pushed where the cluster pulls from."
  type        = string
}

provider "merak" {
  runtime = "kubernetes"
  kubernetes {
    kubeconfig        = var.kubeconfig
    agent_image       = var.agent_image
    pod_ready_timeout = 120
  }
}

resource "merak_topology" "dc" {
  name            = var.name
  racks           = 2
  hosts_per_rack  = 3
  data_plane_cidr = "10.0.0.0/24"
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
  description = "Each EPM's data-plane address."
  value       = { for epm in merak_topology.dc.epms : epm.name => epm.ip }
}

output "ready" {
  value = "${merak_topology.dc.ready_epms} of ${merak_topology.dc.hosts} EPMs ready, ${merak_topology.dc.vswitch_count} vswitches, ${merak_topology.dc.link_count} links"
}
