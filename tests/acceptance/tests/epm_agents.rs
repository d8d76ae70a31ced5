//! Agents under test (`epm_agent` blocks) through the real terraform binary:
//! the user's process runs in every EPM and serves on its data-plane
//! address, a change restarts it in place, a killed agent host is drift the
//! next apply repairs, one that never gets ready is a diagnostic naming it,
//! and destroy leaves no process behind, not even one that detached.

use std::process::Command;

use merak_acceptance::Workspace;

/// The Python the tests run, by absolute path: agents get a plain PATH.
fn python() -> String {
    let output = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A web server on each EPM's data-plane address, ready once it answers
/// there, and a process that detaches from its group (a daemon that forks
/// away), which destroy must still remove.
fn config(greeting: &str, extra_agent: &str) -> String {
    let python = python();
    format!(
        r#"resource "merak_topology" "dc" {{
  name            = "{{name}}"
  racks           = 1
  hosts_per_rack  = 2
  data_plane_cidr = "10.78.0.0/24"

  epm_agent {{
    name          = "web"
    command       = ["{python}", "-m", "http.server", "--bind", "$${{epm_ip}}", "--directory", "/", "8000"]
    env           = {{ GREETING = "{greeting}" }}
    ready_command = ["{python}", "-c", "import urllib.request; urllib.request.urlopen('http://$${{epm_ip}}:8000/', timeout=2)"]
  }}

  epm_agent {{
    name    = "detacher"
    command = ["sh", "-c", "setsid sleep 4242 & echo $${{epm}} $${{epm_index}}; exec sleep 1000"]
  }}
{extra_agent}}}
"#
    )
}

/// Processes whose command line holds `needle` and that run in `netns`.
fn processes_in(netns: &str, needle: &str) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(format!("/run/netns/{netns}")) else { return Vec::new() };
    let target = std::os::unix::fs::MetadataExt::ino(&target);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        if ns.ok() == Some(target) && String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// Running, or about to (a zombie has exited already).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
}

#[test]
fn agents_under_test_run_in_every_epm_restart_in_place_and_leave_with_destroy() {
    let ws = Workspace::new("epmagt");
    let epm0 = format!("merak-{}.epm-0", ws.name);
    ws.write_config(&config("v1", ""));
    ws.init();
    ws.apply();
    let state = ws.resource_values("merak_topology.dc");
    assert_eq!(state["epm_agents_ready"], 2, "{state}");
    assert_eq!(state["epm_agent"][0]["name"], "web");

    // Served from inside epm-0 on its data-plane address: epm-1 reaches it
    // over the underlay.
    let fetch = ws.exec_in(
        "epm-1",
        &[
            &python(),
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://10.78.0.1:8000/', timeout=5).status)",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&fetch.stdout).trim(), "200", "{}", String::from_utf8_lossy(&fetch.stderr));
    let log = ws.state_dir.join(&ws.name).join("epm-1.detacher.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("epm-1 1"), "placeholders replaced per EPM, output in {}: {text}", log.display());
    assert_eq!(ws.plan().0, 0, "{}", ws.plan().1);

    // A changed block is an in-place update that restarts the agent.
    let web_before = processes_in(&epm0, "http.server");
    assert_eq!(web_before.len(), 1, "one web server in epm-0");
    ws.write_config(&config("v2", ""));
    let (code, plan) = ws.plan();
    assert!(code == 2 && plan.contains("update in-place") && !plan.contains("must be replaced"), "{plan}");
    ws.apply();
    let web_after = processes_in(&epm0, "http.server");
    assert_eq!(web_after.len(), 1);
    assert_ne!(web_after, web_before, "restarted with its new environment");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/environ", web_after[0]))
            .unwrap_or_default()
            .split('\0')
            .find(|v| v.starts_with("GREETING=")),
        Some("GREETING=v2")
    );

    // The agents' host killed: its processes die with it; the next plan
    // shows it and apply brings them back.
    for (pid, _) in ws.agent_processes() {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_in(&epm0, "http.server").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the web server outlived its supervisor");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, plan) = ws.plan();
    assert!(code == 2 && plan.contains("epm_agents_ready"), "{plan}");
    ws.apply();
    assert_eq!(ws.resource_values("merak_topology.dc")["epm_agents_ready"], 2);
    assert_eq!(ws.plan().0, 0);

    // An agent that never gets ready: apply says which, on which EPMs, how it
    // ended and where its log is; the state records it, the plan shows it.
    let broken = "\n  epm_agent {\n    name            = \"broken\"\n    command         = [\"sh\", \"-c\", \"echo broken on $${epm} >&2; exit 7\"]\n    ready_timeout_s = 3\n  }\n";
    ws.write_config(&config("v2", broken));
    let apply = ws.terraform(&["apply", "-auto-approve"]);
    let stderr = String::from_utf8_lossy(&apply.stderr).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(!apply.status.success());
    for wanted in ["Agents under test are not ready on 2 EPMs", "agent broken", "exit status: 7", "epm-0.broken.log"] {
        assert!(stderr.contains(wanted), "{wanted:?} in {stderr}");
    }
    assert!(
        std::fs::read_to_string(ws.state_dir.join(&ws.name).join("epm-0.broken.log"))
            .unwrap_or_default()
            .contains("broken on epm-0")
    );
    assert_eq!(ws.resource_values("merak_topology.dc")["epm_agents_ready"], 0);
    assert_eq!(ws.plan().0, 2);
    ws.write_config(&config("v2", ""));
    ws.apply();
    assert_eq!(ws.resource_values("merak_topology.dc")["epm_agents_ready"], 2);

    // Import from an empty state finds the agents in the records.
    {
        let imported = ws.sibling("import");
        imported.write_config(&config("v2", ""));
        imported.init();
        imported.ok(&["import", "merak_topology.dc", &ws.name]);
        assert_eq!(imported.resource_values("merak_topology.dc"), ws.resource_values("merak_topology.dc"));
        assert_eq!(imported.plan().0, 0);
    }

    // Destroy: every process goes, the detached ones too.
    let left: Vec<u32> =
        ["epm-0", "epm-1"].iter().flat_map(|epm| processes_in(&format!("merak-{}.{epm}", ws.name), "sleep")).collect();
    assert!(left.len() >= 4, "a detached sleep and the agent's own on each EPM: {left:?}");
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
    // Killed is not yet gone: give the kernel a moment to finish them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let survivors: Vec<u32> = left.iter().copied().filter(|pid| alive(*pid)).collect();
        if survivors.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "processes outlived their EPMs: {survivors:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn bad_epm_agents_are_refused_at_plan() {
    let ws = Workspace::new("epmbad");
    let topology = |agents: &str| {
        format!(
            "resource \"merak_topology\" \"dc\" {{\n  name = \"{{name}}\"\n  racks = 1\n  hosts_per_rack = 1\n  data_plane_cidr = \"10.79.0.0/24\"\n{agents}}}\n"
        )
    };
    let block = |body: &str| format!("  epm_agent {{\n{body}\n  }}\n");
    ws.write_config(&topology(""));
    ws.init();
    let cases = [
        (block("    name = \"a\"\n    command = []"), "Empty epm_agent command"),
        (block("    name = \"a\"\n    command = [\"\"]"), "Empty epm_agent command"),
        (
            block("    name = \"a\"\n    command = [\"true\"]") + &block("    name = \"a\"\n    command = [\"true\"]"),
            "Duplicate epm_agent name",
        ),
        (block("    name = \"Not_A_Label\"\n    command = [\"true\"]"), "Invalid epm_agent name"),
        (block("    name = \"a\"\n    command = [\"agent\", \"$${controller_url}\"]"), "No controller to name"),
        (block("    name = \"a\"\n    command = [\"true\"]\n    ready_command = []"), "Empty ready_command"),
        (block("    name = \"a\"\n    command = [\"true\"]\n    ready_timeout_s = 0"), "Invalid ready_timeout_s"),
        (
            block("    name = \"a\"\n    command = [\"true\"]\n    env = { \"A=B\" = \"c\" }"),
            "Invalid environment variable name",
        ),
        (
            block("    name = \"a\"\n    command = [\"true\"]\n    image = \"localhost/a:1\""),
            "image needs the kubernetes runtime",
        ),
    ];
    for (agents, summary) in cases {
        ws.write_config(&topology(&agents));
        let stderr = ws.plan_error(&agents);
        // Terraform quotes the line of the block the diagnostic points at.
        assert!(
            stderr.contains(summary) && stderr.contains("in resource \"merak_topology\" \"dc\""),
            "{agents}: wanted {summary:?} in {stderr}"
        );
        assert!(ws.namespaces().is_empty(), "{agents}: something was built");
    }
    ws.assert_nothing_left();
}
