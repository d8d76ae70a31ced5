//! `link_profile` through the real terraform on the local runtime (the
//! scenario is merak_acceptance::shaping's, which the kubernetes runtime
//! runs too): a rate measured for real, a new rate in place, shaping
//! removed by hand shown by plan and put back, delay refused naming
//! sch_netem on this kernel, which has none; `merak_pingall` with
//! `scope = "underlay"` between the EPMs. Needs root.

use merak_acceptance::Workspace;
use merak_acceptance::shaping::{config, links_are_shaped};

#[test]
fn links_are_shaped_to_their_profile_and_delay_needs_netem() {
    let ws = Workspace::new("shape");
    ws.write_config(&config());
    ws.init();
    let name = ws.name.clone();
    links_are_shaped(&ws, &|epm| format!("merak-{name}.{epm}"));
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}
