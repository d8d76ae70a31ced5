//! The fat-tree scenario (merak_acceptance::fat_tree, which the kubernetes
//! runtime runs too) through the real terraform on the local runtime, then
//! destroy leaving nothing. Needs root.

use merak_acceptance::Workspace;
use merak_acceptance::fat_tree::{example, routes_over_every_core_and_survives_one};

#[test]
fn a_fat_tree_routes_every_epm_over_every_core_and_survives_one() {
    let ws = Workspace::new("fat");
    std::fs::write(ws.dir.join("main.tf"), example(None)).expect("write main.tf");
    ws.init();
    let vars = [format!("name={}", ws.name), format!("state_dir={}", ws.state_dir.display())];
    let name = ws.name.clone();
    routes_over_every_core_and_survives_one(&ws, &vars, &|object| format!("merak-{name}.{object}"));
    let destroy: Vec<String> = ["destroy", "-auto-approve"]
        .map(String::from)
        .into_iter()
        .chain(vars.iter().flat_map(|v| ["-var".to_string(), v.clone()]))
        .collect();
    ws.ok(&destroy.iter().map(String::as_str).collect::<Vec<_>>());
    ws.assert_nothing_left();
}
