//! The security-groups scenario (merak_acceptance::security_groups, which
//! the kubernetes runtime runs too) through the real terraform on the local
//! runtime, then destroy leaving nothing. Needs root.

use merak_acceptance::Workspace;
use merak_acceptance::operate::Merak;
use merak_acceptance::security_groups::{enforced_as_declared, example};

#[test]
fn security_groups_are_enforced_as_declared_and_change_in_place() {
    let ws = Workspace::new("sg");
    std::fs::write(ws.dir.join("main.tf"), example(None)).expect("write main.tf");
    ws.init();
    let vars = [format!("name={}", ws.name), format!("state_dir={}", ws.state_dir.display())];
    enforced_as_declared(&ws, &vars, &Merak::local(&ws.state_dir, &ws.name));
    let destroy: Vec<String> = ["destroy", "-auto-approve"]
        .map(String::from)
        .into_iter()
        .chain(vars.iter().flat_map(|v| ["-var".to_string(), v.clone()]))
        .collect();
    ws.ok(&destroy.iter().map(String::as_str).collect::<Vec<_>>());
    ws.assert_nothing_left();
}
