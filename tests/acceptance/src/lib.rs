//! Acceptance-test harness: a Terraform working directory wired to the
//! provider built in this workspace, and cleanup that runs even when a test
//! fails.
//!
//! The provider reaches Terraform through a filesystem mirror (the route
//! `terraform init` and modules need), laid out per working directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace's version (Cargo.toml), the one the provider reports.
pub const PROVIDER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The registry hosts `merak/merak` may stand for: Terraform's and OpenTofu's.
const REGISTRY_HOSTS: [&str; 2] = ["registry.terraform.io", "registry.opentofu.org"];

/// Whether this run checks another Terraform client (`make test`'s second
/// and third passes, with Terraform 1.0.3 and OpenTofu) against what the
/// first pass covered: scenarios that exercise only a runtime, not the
/// protocol, are left to the first pass.
pub fn client_pass() -> bool {
    std::env::var_os("MERAK_CLIENT_PASS").is_some()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

/// The provider and agent binaries, built by `make test` before the tests run
/// (from `target/debug`, or the directory in $MERAK_BIN_DIR).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("MERAK_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| target_dir().join("debug"));
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build with `cargo build --workspace` (make test does)", path.display());
    path
}

/// The Terraform binary: $MERAK_TERRAFORM, or Terraform 1.0.3 installed on first use.
pub fn terraform() -> &'static Path {
    static TERRAFORM: OnceLock<PathBuf> = OnceLock::new();
    TERRAFORM.get_or_init(|| {
        if let Some(path) = std::env::var_os("MERAK_TERRAFORM") {
            // Terraform runs in each test's own directory: a relative path
            // must not be taken relative to that.
            let path = PathBuf::from(path);
            return std::path::absolute(&path).unwrap_or(path);
        }
        let script = repo_root().join("tests/acceptance/install-terraform.sh");
        let output = Command::new("bash").arg(script).output().expect("run install-terraform.sh");
        assert!(output.status.success(), "installing terraform failed: {}", String::from_utf8_lossy(&output.stderr));
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// $MERAK_KUBECTL, else kubectl on PATH, else the one install-deps.sh put
/// in Python's scripts directory.
pub fn kubectl() -> PathBuf {
    if let Some(path) = std::env::var_os("MERAK_KUBECTL") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let output = Command::new("python3")
            .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
            .output()
            .expect("python3 runs");
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("kubectl")
    })
}

/// A Terraform working directory for one test, with its own topology name,
/// state directory and provider mirror. Dropping it destroys whatever the
/// test built and removes anything left of it on the host.
pub struct Workspace {
    pub dir: PathBuf,
    /// The topology name this test uses; unique per test and process.
    pub name: String,
    pub state_dir: PathBuf,
    /// The agent binary the provider is told to use, when not its default.
    agent_path: Option<PathBuf>,
    /// The provider block, when not the local runtime's default one.
    provider: Option<String>,
    /// Environment terraform runs with beyond the harness's own.
    env: Vec<(String, PathBuf)>,
    destroy_on_drop: bool,
}

impl Workspace {
    pub fn new(test: &str) -> Self {
        let name = format!("{test}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("merak-acceptance-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let state_dir = dir.join("state");
        let mirror = dir.join("mirror");
        // `merak/merak` names Terraform's registry host under terraform and
        // OpenTofu's under tofu: the mirror holds the provider for both.
        for host in REGISTRY_HOSTS {
            let package = mirror.join(format!("{host}/merak/merak/{PROVIDER_VERSION}/linux_amd64"));
            std::fs::create_dir_all(&package).expect("create mirror");
            std::os::unix::fs::symlink(
                binary("terraform-provider-merak"),
                package.join(format!("terraform-provider-merak_v{PROVIDER_VERSION}")),
            )
            .expect("link provider");
            std::os::unix::fs::symlink(binary("merak-agent"), package.join("merak-agent")).expect("link agent");
        }
        let ours = REGISTRY_HOSTS.map(|host| format!("\"{host}/merak/*\"")).join(", ");
        let cli_config = format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n    include = [{ours}]\n  }}\n  direct {{\n    exclude = [{ours}]\n  }}\n}}\n",
            mirror.display()
        );
        std::fs::write(dir.join("cli.tfrc"), cli_config).expect("write CLI config");
        Workspace { dir, name, state_dir, agent_path: None, provider: None, env: Vec::new(), destroy_on_drop: true }
    }

    /// Writes `block` as the provider block instead of the local runtime's.
    pub fn with_provider(mut self, block: String) -> Self {
        self.provider = Some(block);
        self
    }

    /// Runs terraform with `key` set to `value` in its environment.
    pub fn with_env(mut self, key: &str, value: impl Into<PathBuf>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Has the provider run this workspace's own copy of the agent binary,
    /// which [`Workspace::upgrade_agent`] can replace without touching
    /// other tests' agents.
    pub fn with_agent_copy(mut self) -> Self {
        let path = self.dir.join("agent").join("merak-agent");
        std::fs::create_dir_all(self.dir.join("agent")).expect("create agent dir");
        std::fs::copy(binary("merak-agent"), &path).expect("copy agent");
        self.agent_path = Some(path);
        self
    }

    /// Installs another build of the agent, as an upgrade does: a new file
    /// (here the same program with bytes appended, so its build id differs)
    /// renamed over the old one (running agents keep the old, unlinked one).
    pub fn upgrade_agent(&self) {
        use std::io::Write;
        let path = self.agent_path.as_ref().expect("with_agent_copy first");
        let fresh = path.with_extension("new");
        std::fs::copy(binary("merak-agent"), &fresh).expect("copy agent");
        let mut file = std::fs::OpenOptions::new().append(true).open(&fresh).expect("open the new build");
        writeln!(file, "another build {:?}", std::time::SystemTime::now()).expect("mark the new build");
        drop(file);
        std::fs::rename(&fresh, path).expect("install agent");
    }

    /// A second working directory on the same topology (for import): it
    /// shares the state directory and never destroys on drop.
    pub fn sibling(&self, suffix: &str) -> Self {
        let mut other = Workspace::new(&format!("{}-{suffix}", self.name));
        let _ = std::fs::remove_dir_all(&other.state_dir);
        other.name = self.name.clone();
        other.state_dir = self.state_dir.clone();
        other.agent_path = self.agent_path.clone();
        other.env = self.env.clone();
        other.destroy_on_drop = false;
        other
    }

    /// How the provider reaches the agents in this run: $MERAK_AGENT_TRANSPORT
    /// (`unix` or `tcp`), or the provider's default (`unix`).
    pub fn transport() -> String {
        std::env::var("MERAK_AGENT_TRANSPORT").unwrap_or_else(|_| "unix".into())
    }

    /// Writes main.tf: the provider block pointing at this test's state
    /// directory (and agent transport, see [`Workspace::transport`]), then
    /// `resources` with `{name}` replaced by the topology name.
    pub fn write_config(&self, resources: &str) {
        if let Some(provider) = &self.provider {
            let config = format!(
                "terraform {{\n  required_providers {{\n    merak = {{ source = \"merak/merak\" }}\n  }}\n}}\n\n{provider}\n\n{}\n",
                resources.replace("{name}", &self.name)
            );
            std::fs::write(self.dir.join("main.tf"), config).expect("write main.tf");
            return;
        }
        let transport = std::env::var("MERAK_AGENT_TRANSPORT")
            .map(|t| format!("    agent_transport = \"{t}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "terraform {{\n  required_providers {{\n    merak = {{ source = \"merak/merak\" }}\n  }}\n}}\n\n\
             provider \"merak\" {{\n  local {{\n    state_dir = \"{}\"\n{}{transport}  }}\n}}\n\n{}\n",
            self.state_dir.display(),
            self.agent_path.as_ref().map(|p| format!("    agent_path = \"{}\"\n", p.display())).unwrap_or_default(),
            resources.replace("{name}", &self.name)
        );
        std::fs::write(self.dir.join("main.tf"), config).expect("write main.tf");
    }

    pub fn terraform(&self, args: &[&str]) -> Output {
        self.terraform_command(Command::new(terraform()), args).output().expect("run terraform")
    }

    /// Starts terraform in a process group of its own, so that a fault test
    /// can kill it with its provider (`kill(-pid)`) and nothing else.
    pub fn spawn_terraform(&self, args: &[&str]) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut command = self.terraform_command(Command::new(terraform()), args);
        command.process_group(0).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        command.spawn().expect("start terraform")
    }

    /// [`Workspace::spawn_terraform`] with terraform's and the provider's
    /// log (provider lines at info) written to `log`.
    pub fn spawn_terraform_logged(&self, args: &[&str], log: &Path) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut command = self.terraform_command(Command::new(terraform()), args);
        command.env("TF_LOG_PROVIDER", "INFO").env("TF_LOG_PATH", log);
        command.process_group(0).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        command.spawn().expect("start terraform")
    }

    /// Runs terraform through a wrapper, e.g. `setpriv` to drop capabilities.
    pub fn terraform_via(&self, wrapper: &[&str], args: &[&str]) -> Output {
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(terraform());
        self.terraform_command(command, args).output().expect("run terraform")
    }

    fn terraform_command(&self, mut command: Command, args: &[&str]) -> Command {
        command
            .args(args)
            .arg("-no-color")
            .current_dir(&self.dir)
            .env("TF_CLI_CONFIG_FILE", self.dir.join("cli.tfrc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    /// Runs terraform and fails the test, showing its output, unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.terraform(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "terraform {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    pub fn init(&self) {
        self.ok(&["init"]);
    }

    pub fn apply(&self) -> String {
        self.ok(&["apply", "-auto-approve"])
    }

    /// `plan -detailed-exitcode`: 0 = no changes, 2 = changes; with its output.
    pub fn plan(&self) -> (i32, String) {
        let output = self.terraform(&["plan", "-detailed-exitcode"]);
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    }

    /// Runs `terraform plan`, which must fail with an error (exit 1, not a
    /// crash); returns what it printed on stderr.
    pub fn plan_error(&self, context: &str) -> String {
        let output = self.terraform(&["plan"]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{context}: {stderr}");
        stderr
    }

    /// The attributes of the one resource in the state.
    pub fn resource_values(&self, address: &str) -> serde_json::Value {
        let show: serde_json::Value = serde_json::from_str(&self.ok(&["show", "-json"])).expect("show -json");
        let resources = show["values"]["root_module"]["resources"].as_array().cloned().unwrap_or_default();
        resources
            .into_iter()
            .find(|r| r["address"] == address)
            .map(|r| r["values"].clone())
            .unwrap_or_else(|| panic!("{address} not in state: {show}"))
    }

    /// Network namespaces of this test's topology.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("merak-{}.", self.name);
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| n.starts_with(&prefix));
        names.sort();
        names
    }

    /// The EPMs of this test whose agent serves its socket, as (pid serving
    /// it, EPM name): the pid is the listening process's (SO_PEERCRED), so
    /// this reads what the kernel knows, not what the provider recorded.
    pub fn agents(&self) -> Vec<(u32, String)> {
        let dir = self.state_dir.join(&self.name);
        let mut agents = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(epm) = path.file_stem().and_then(|s| s.to_str()).filter(|s| s.starts_with("epm-")) else {
                continue;
            };
            if path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            let Ok(stream) = std::os::unix::net::UnixStream::connect(&path) else { continue };
            if let Some(pid) = peer_pid(&stream) {
                agents.push((pid, epm.to_string()));
            }
        }
        agents.sort_by(|a, b| a.1.cmp(&b.1));
        agents
    }

    /// Live merak-agent processes of this test (its topology's agent host,
    /// or any agent serving a socket in its state), as (pid, socket name).
    pub fn agent_processes(&self) -> Vec<(u32, String)> {
        let dir = self.state_dir.join(&self.name);
        let mut agents = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
                continue;
            }
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            if !args.first().is_some_and(|a| a.ends_with("merak-agent")) {
                continue;
            }
            let socket =
                args.windows(2).find(|w| w[0] == "--socket" || w[0] == "--control").map(|w| PathBuf::from(&w[1]));
            if let Some(socket) = socket.filter(|s| s.parent() == Some(dir.as_path())) {
                let name = socket.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                agents.push((pid, name));
            }
        }
        agents.sort_by(|a, b| a.1.cmp(&b.1));
        agents
    }

    /// Asserts nothing of this test's topology is left on the host.
    pub fn assert_nothing_left(&self) {
        if let Err(left) = self.check_nothing_left() {
            panic!("{left}");
        }
    }

    /// Nothing of this test's topology on the host, or what is left.
    pub fn check_nothing_left(&self) -> Result<(), String> {
        let mut left = Vec::new();
        let namespaces = self.namespaces();
        if !namespaces.is_empty() {
            left.push(format!("namespaces left: {namespaces:?}"));
        }
        let agents = self.agent_processes();
        if !agents.is_empty() {
            left.push(format!("agents left: {agents:?}"));
        }
        let records = self.state_dir.join(&self.name);
        if let Ok(entries) = std::fs::read_dir(&records) {
            let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            left.push(format!("runtime state left in {}: {names:?}", records.display()));
        }
        let lock = self.state_dir.join(format!("{}.lock", self.name));
        if lock.exists() {
            left.push(format!("lock file left: {}", lock.display()));
        }
        if left.is_empty() { Ok(()) } else { Err(left.join("; ")) }
    }

    /// Runs a command inside one of the topology's namespaces.
    pub fn exec_in(&self, object: &str, command: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &format!("merak-{}.{object}", self.name)])
            .args(command)
            .output()
            .expect("run ip netns exec")
    }

    /// Whether `from` (an EPM) reaches `ip` with one ping.
    pub fn pings(&self, from: &str, ip: &str) -> bool {
        self.exec_in(from, &["ping", "-c", "1", "-W", "2", ip]).status.success()
    }

    fn force_cleanup(&self) {
        // What a destroy does, without Terraform: also puts back the host
        // limits the topology raised, whatever state the test left.
        let _ = Command::new(binary("terraform-provider-merak"))
            .args(["--destroy-topology", &self.name, "--state-dir"])
            .arg(&self.state_dir)
            .output();
        for (pid, _) in self.agent_processes() {
            // SAFETY: kill(2) on an agent of this test.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        for namespace in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "delete", &namespace]).status();
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.destroy_on_drop {
            if self.dir.join("terraform.tfstate").exists() {
                let _ = self.terraform(&["destroy", "-auto-approve"]);
            }
            self.force_cleanup();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
pub mod fat_tree;
pub mod faults;
pub mod fixtures;
pub mod floor;
pub mod host;
pub mod kubernetes;
pub mod operate;
pub mod real_cluster;
pub mod security_groups;
pub mod shaping;

/// The pid of the process at the other end of a unix socket connection.
fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(2) SO_PEERCRED into a ucred of the given length.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &mut length,
        )
    };
    (rc == 0 && credentials.pid > 0).then_some(credentials.pid as u32)
}
