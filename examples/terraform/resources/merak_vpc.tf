# A tenant network on the topology.
resource "merak_vpc" "blue" {
  topology_id = merak_topology.lab.id
  name        = "blue"
  cidr        = "10.1.0.0/16"
}
