# The second rack cut off from the core: its top-of-rack vswitch's uplink
# down at both ends for as long as the fault stands (EPMs within the rack
# still reach each other).
resource "merak_fault" "rack_1" {
  topology_id = merak_topology.lab.id
  name        = "rack-1-cut-off"
  links       = ["s1-0--s0-1"]
}
