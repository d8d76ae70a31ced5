# 12 EVMs spread over all EPMs (their ports in a security group), 4 packed
# onto two chosen EPMs, and 5 placed by a count per EPM.
resource "merak_evm_group" "web" {
  subnet_id          = merak_subnet.web.id
  name               = "web"
  evm_count          = 12
  security_group_ids = [merak_security_group.web.id]
}

resource "merak_evm_group" "db" {
  subnet_id = merak_subnet.db.id
  name      = "db"
  evm_count = 4
  placement = "pack"
  epms      = ["epm-6", "epm-7"]
}

resource "merak_evm_group" "cache" {
  subnet_id  = merak_subnet.db.id
  name       = "cache"
  epm_counts = { "epm-0" = 3, "epm-1" = 2 }
}
