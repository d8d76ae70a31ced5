# Two subnets of the VPC; they route to each other through the gateway on every EPM.
resource "merak_subnet" "web" {
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.1.1.0/24"
}

resource "merak_subnet" "db" {
  vpc_id     = merak_vpc.blue.id
  name       = "db"
  cidr       = "10.1.2.0/24"
  gateway_ip = "10.1.2.254"
}
