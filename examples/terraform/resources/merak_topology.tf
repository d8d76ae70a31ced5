# 2 racks of 4 EPMs under two top-of-rack vswitches and one core.
resource "merak_topology" "lab" {
  name            = "lab"
  racks           = 2
  hosts_per_rack  = 4
  data_plane_cidr = "10.10.0.0/24"
}

output "epm_ips" {
  value = { for epm in merak_topology.lab.epms : epm.name => epm.ip }
}
