//! HCL and readers the acceptance tests share: the tenant network most of
//! them put on a topology `merak_topology.dc`, the pingall that checks it,
//! and reading that pingall's outcome from an apply.

/// VPC `blue` (10.1.0.0/16), its subnet `web` (10.1.1.0/24) and EVM group
/// `web` of `evms` EVMs (an HCL expression: `6`, `var.evms`), on
/// `merak_topology.dc`.
pub fn tenant(evms: &str) -> String {
    format!(
        r#"
resource "merak_vpc" "blue" {{
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.1.0.0/16"
}}

resource "merak_subnet" "web" {{
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.1.1.0/24"
}}

resource "merak_evm_group" "web" {{
  subnet_id = merak_subnet.web.id
  name      = "web"
  evm_count = {evms}
}}
"#
    )
}

/// A pingall of `merak_topology.dc` after `depends_on` (an HCL list's
/// items, e.g. `merak_evm_group.web`), its outcome as output `pingall`:
/// `"<replies>/<expected> replies"`; [`pingall_whole`] reads it.
pub fn pingall(depends_on: &str) -> String {
    format!(
        r#"
data "merak_pingall" "check" {{
  topology_id = merak_topology.dc.id
  depends_on  = [{depends_on}]
}}

output "pingall" {{
  value = "${{data.merak_pingall.check.replies}}/${{data.merak_pingall.check.expected_replies}} replies"
}}
"#
    )
}

/// An underlay pingall of `merak_topology.dc` (every EPM to every other,
/// on the data plane) after `depends_on` (an HCL list's items), its outcome
/// as output `underlay`: `"<replies>/<expected>"`.
pub fn underlay_pingall(depends_on: &str) -> String {
    format!(
        r#"
data "merak_pingall" "underlay" {{
  topology_id = merak_topology.dc.id
  scope       = "underlay"
  depends_on  = [{depends_on}]
}}

output "underlay" {{
  value = "${{data.merak_pingall.underlay.replies}}/${{data.merak_pingall.underlay.expected_replies}}"
}}
"#
    )
}

/// Whether an apply's `pingall` output (see [`pingall`]) says every
/// expected reply came, and that there was one at least.
pub fn pingall_whole(output: &str) -> bool {
    let Some(line) = output.lines().find(|l| l.trim_start().starts_with("pingall = ")) else { return false };
    let counts = line.split('"').nth(1).and_then(|t| t.strip_suffix(" replies")).and_then(|t| t.split_once('/'));
    counts.is_some_and(|(got, of)| got == of && of != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pingall_is_whole_only_when_every_expected_reply_came() {
        assert!(pingall_whole("Outputs:\n\npingall = \"12/12 replies\"\n"));
        assert!(!pingall_whole("pingall = \"11/12 replies\""));
        assert!(!pingall_whole("pingall = \"0/0 replies\""), "no pings is not whole");
        assert!(!pingall_whole("Apply complete!"));
    }
}
