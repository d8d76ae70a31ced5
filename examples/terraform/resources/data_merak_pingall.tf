# Pings from inside the EVMs, once they exist: within each VPC, those its
# security groups allow must answer and those they deny must not.
data "merak_pingall" "lab" {
  topology_id = merak_topology.lab.id
  depends_on  = [merak_evm_group.web, merak_evm_group.db, merak_evm_group.cache]
}

output "pingall" {
  value = "${data.merak_pingall.lab.replies}/${data.merak_pingall.lab.expected_replies} replies, ${data.merak_pingall.lab.denied_kept}/${data.merak_pingall.lab.denied_probes} denied by security groups, ${data.merak_pingall.lab.isolation_kept}/${data.merak_pingall.lab.isolation_probes} isolation probes blocked"
}
