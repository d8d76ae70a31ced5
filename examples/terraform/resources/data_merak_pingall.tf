# Pings from inside the EVMs, once they exist.
data "merak_pingall" "lab" {
  topology_id = merak_topology.lab.id
  depends_on  = [merak_evm_group.web, merak_evm_group.db, merak_evm_group.cache]
}

output "pingall" {
  value = "${data.merak_pingall.lab.received}/${data.merak_pingall.lab.sent} replies, ${data.merak_pingall.lab.unexpected} unexpected"
}
