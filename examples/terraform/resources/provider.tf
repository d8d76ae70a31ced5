terraform {
  required_providers {
    merak = {
      source = "merak/merak"
    }
  }
}

# The local runtime builds everything on this host (run terraform as root).
provider "merak" {
  runtime = "local"
  local {
    state_dir = "/var/lib/merak"
  }
}
