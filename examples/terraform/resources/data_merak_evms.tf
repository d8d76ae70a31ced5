# The EVMs of one group on one EPM.
data "merak_evms" "web_on_epm0" {
  topology_id = merak_topology.lab.id
  group       = merak_evm_group.web.name
  epm         = "epm-0"
}

output "web_on_epm0" {
  value = [for evm in data.merak_evms.web_on_epm0.evms : "${evm.name} ${evm.ip} ${evm.namespace}"]
}
