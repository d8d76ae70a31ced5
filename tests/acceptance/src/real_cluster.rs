//! The project's real single-node Kubernetes (tests/real-cluster: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and the kubelet
//! built from their Go modules; Debian's containerd, runc and CNI plugins)
//! for the acceptance suite: built when needed (cached), started, given the
//! agent image of this build, and torn down again when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kubernetes::Cluster;
use crate::repo_root;

/// A started real cluster; dropping it runs down.sh, unless it was running
/// before (a developer's `make real-cluster`), which is left running.
pub struct RealCluster {
    kubeconfig: PathBuf,
    node: String,
    /// containerd's socket, to see what the pods left on the host.
    containerd_socket: PathBuf,
    /// The host's `cni-*` network namespaces before the cluster's first pod.
    cni_namespaces_before: Vec<String>,
    owned: bool,
}

/// Why there is no real cluster to test against, in one line.
pub struct Unavailable(pub String);

fn script(name: &str) -> PathBuf {
    repo_root().join("tests/real-cluster").join(name)
}

fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command.output().map_err(|e| format!("{what}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn cni_namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("cni-"))
        .collect();
    names.sort();
    names
}

impl RealCluster {
    /// Builds the cluster's binaries (cached after the first time), starts
    /// it, and imports the agent image made from `agent` as `image`. Where
    /// Go is missing and nothing was built before, says so (Unavailable);
    /// any other failure is an error with the failing step's output.
    pub fn start(agent: &Path, image: &str) -> Result<Result<RealCluster, Unavailable>, String> {
        // Its progress shows; its one-line reason to stop is kept.
        let build = Command::new("bash")
            .arg(script("build.sh"))
            .stdout(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("build.sh: {e}"))?;
        if build.status.code() == Some(2) {
            return Ok(Err(Unavailable(String::from_utf8_lossy(&build.stderr).trim().to_string())));
        }
        if !build.status.success() {
            return Err(format!(
                "tests/real-cluster/build.sh failed:\n{}{}",
                String::from_utf8_lossy(&build.stdout),
                String::from_utf8_lossy(&build.stderr)
            ));
        }
        let state = repo_root().join("target/real-cluster");
        let owned = !std::fs::metadata(state.join("pids")).is_ok_and(|m| m.len() > 0);
        let cni_namespaces_before = cni_namespaces();
        run(Command::new("bash").arg(script("up.sh")), "tests/real-cluster/up.sh")?;
        let cluster = RealCluster {
            kubeconfig: state.join("kubeconfig"),
            node: run(&mut Command::new("hostname"), "hostname")?.trim().to_lowercase(),
            containerd_socket: PathBuf::from("/run/merak-real-cluster/containerd.sock"),
            cni_namespaces_before,
            owned,
        };
        // From here on a failure drops `cluster`, which tears it down.
        let archive = run(
            Command::new("bash").arg(script("images/build.sh")).arg("agent").arg(agent).arg(image),
            "building the agent image",
        )?;
        run(Command::new("bash").arg(script("import-image.sh")).arg(archive.trim()), "importing the agent image")?;
        Ok(Ok(cluster))
    }

    /// Imports an image of tests/real-cluster/images/build.sh (busybox...).
    pub fn import_test_image(&self, name: &str) -> Result<String, String> {
        let archive =
            run(Command::new("bash").arg(script("images/build.sh")).arg(name), &format!("building the {name} image"))?;
        run(
            Command::new("bash").arg(script("import-image.sh")).arg(archive.trim()),
            &format!("importing the {name} image"),
        )?;
        Ok(format!("localhost/merak-real-cluster/{name}:1.0"))
    }

    /// Restarts one of the cluster's processes (containerd, kubelet...) as
    /// an operator would, and waits until it serves again.
    pub fn restart(&self, component: &str) {
        if let Err(error) =
            run(Command::new("bash").arg(script("restart.sh")).arg(component), &format!("restarting {component}"))
        {
            panic!("{error}");
        }
    }

    /// The running containers of the cluster's pods, as containerd lists them.
    fn running_tasks(&self) -> Vec<String> {
        let output = Command::new("ctr")
            .args(["--address"])
            .arg(&self.containerd_socket)
            .args(["--namespace", "k8s.io", "tasks", "list"])
            .output();
        let Ok(output) = output else { return vec!["ctr tasks list could not run".into()] };
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(2) == Some("RUNNING"))
            .map(|l| format!("task {}", l.split_whitespace().next().unwrap_or_default()))
            .collect()
    }
}

impl Cluster for RealCluster {
    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
    fn nodes(&self) -> usize {
        1
    }
    fn node_name_prefix(&self) -> String {
        self.node.clone()
    }
    fn pod_network_namespaces(&self) -> Vec<String> {
        cni_namespaces()
    }
    fn host_leftovers(&self) -> Vec<String> {
        let mut left = self.running_tasks();
        left.extend(
            cni_namespaces()
                .into_iter()
                .filter(|n| !self.cni_namespaces_before.contains(n))
                .map(|n| format!("network namespace {n}")),
        );
        left
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(error) = run(Command::new("bash").arg(script("down.sh")), "tests/real-cluster/down.sh") {
            eprintln!("{error}");
        }
    }
}
