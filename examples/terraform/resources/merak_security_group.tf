# SSH to the web group's EVMs from the operators' subnet only, ping among
# them; they may send anywhere. EVM groups naming no security group (db and
# cache here) are in the VPC's implicit default group.
resource "merak_security_group" "web" {
  vpc_id      = merak_vpc.blue.id
  name        = "web"
  description = "SSH from the operators' network, ping within the group"

  ingress {
    protocol    = "tcp"
    from_port   = 22
    cidr_blocks = ["10.1.0.0/24"]
  }

  ingress {
    protocol = "icmp"
    self     = true
  }

  egress {
    protocol    = "all"
    cidr_blocks = ["0.0.0.0/0"]
  }
}
