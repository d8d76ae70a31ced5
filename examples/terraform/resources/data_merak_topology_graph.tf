# A picture of the "lab" topology for a pull request. Its values are given
# here, not read from merak_topology.lab, so it is known at plan.
data "merak_topology_graph" "lab" {
  name            = "lab"
  racks           = 2
  hosts_per_rack  = 4
  data_plane_cidr = "10.10.0.0/24"
}

output "lab_mermaid" {
  value = data.merak_topology_graph.lab.mermaid
}
