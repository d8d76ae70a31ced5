# Pings from inside the EVMs, once they exist.
data "merak_pingall" "lab" {
  topology_id = merak_topology.lab.id
  depends_on  = [merak_evm_group.web, merak_evm_group.db, merak_evm_group.cache]
}

output "pingall" {
  value = "${data.merak_pingall.lab.replies}/${data.merak_pingall.lab.expected_replies} replies, ${data.merak_pingall.lab.isolation_kept}/${data.merak_pingall.lab.isolation_probes} isolation probes blocked"
}
