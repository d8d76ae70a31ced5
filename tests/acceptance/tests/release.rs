//! The release a registry or a team's network mirror serves: `make release`'s
//! packaging (release/package.sh), run here on the workspace's binaries,
//! served over HTTPS from loopback, installed by `terraform init` through
//! `provider_installation { network_mirror }` alone (no filesystem mirror,
//! no dev overrides), then applied and destroyed: the provider runs the agent
//! it finds beside itself in the unpacked package.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use merak_acceptance::{PROVIDER_VERSION, Workspace, binary, repo_root};

/// Runs a command that must succeed; its stdout.
fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The HTTPS server of serve-https.py; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(cert: &Path, key: &Path, root: &Path) -> (Server, u16) {
    let mut child = Command::new("python3")
        .arg(repo_root().join("tests/acceptance/serve-https.py"))
        .args([cert, key, root])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start serve-https.py");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the port");
    let port = line.trim().parse().unwrap_or_else(|_| panic!("serve-https.py printed {line:?}, not a port"));
    (server, port)
}

#[test]
fn a_release_installs_from_a_network_mirror_and_runs() {
    let ws = Workspace::new("release");
    let dist = ws.dir.join("dist");
    let name = format!("terraform-provider-merak_{PROVIDER_VERSION}");

    // A throwaway signing key, as a release's would be given.
    let gnupg = ws.dir.join("gnupg");
    std::fs::create_dir_all(&gnupg).expect("create GNUPGHOME");
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod GNUPGHOME");
    let signer = "merak release test <release-test@merak.invalid>";
    run(Command::new("gpg").env("GNUPGHOME", &gnupg).args([
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        signer,
        "ed25519",
        "sign",
        "1d",
    ]));

    let bin_dir = binary("terraform-provider-merak").parent().map(Path::to_path_buf).expect("binary directory");
    run(Command::new(repo_root().join("release/package.sh"))
        .env("GNUPGHOME", &gnupg)
        .env("MERAK_GPG_KEY", "release-test@merak.invalid")
        .arg(&bin_dir)
        .arg(PROVIDER_VERSION)
        .arg(&dist));

    // What a registry checks: the sums cover the zip and the manifest, the
    // signature is the key's, the manifest names protocol 6.0, and the zip
    // holds the provider under Terraform's name with the agent beside it.
    let sums = format!("{name}_SHA256SUMS");
    let listed = run(Command::new("sha256sum").arg("--check").arg(&sums).current_dir(&dist));
    assert!(listed.contains(&format!("{name}_linux_amd64.zip: OK")), "{listed}");
    assert!(listed.contains(&format!("{name}_manifest.json: OK")), "{listed}");
    run(Command::new("gpg")
        .env("GNUPGHOME", &gnupg)
        .args(["--batch", "--verify"])
        .arg(dist.join(format!("{sums}.sig")))
        .arg(dist.join(&sums)));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dist.join(format!("{name}_manifest.json"))).expect("read manifest"))
            .expect("manifest is JSON");
    assert_eq!(manifest["metadata"]["protocol_versions"], serde_json::json!(["6.0"]));
    let entries = run(Command::new("unzip").arg("-Z1").arg(dist.join(format!("{name}_linux_amd64.zip"))));
    let mut entries: Vec<&str> = entries.lines().collect();
    entries.sort();
    assert_eq!(
        entries,
        ["merak".to_string(), "merak-agent".into(), format!("terraform-provider-merak_v{PROVIDER_VERSION}")]
    );

    // The mirror over HTTPS, with a certificate only this test trusts.
    let (cert, key) = (ws.dir.join("mirror.crt"), ws.dir.join("mirror.key"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let (_server, port) = serve(&cert, &key, &dist.join("mirror"));
    std::fs::write(
        ws.dir.join("cli.tfrc"),
        format!("provider_installation {{\n  network_mirror {{\n    url = \"https://localhost:{port}/\"\n  }}\n}}\n"),
    )
    .expect("write CLI config");
    // Go's TLS reads the roots from SSL_CERT_FILE.
    let ws = ws.with_env("SSL_CERT_FILE", PathBuf::from(&cert));

    ws.write_config(
        "resource \"merak_topology\" \"lab\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  \
         data_plane_cidr = \"10.78.0.0/24\"\n}\n\n\
         data \"merak_pingall\" \"underlay\" {\n  topology_id = merak_topology.lab.id\n  scope = \"underlay\"\n}\n\n\
         output \"unexpected\" {\n  value = data.merak_pingall.underlay.unexpected\n}\n\n\
         output \"replies\" {\n  value = data.merak_pingall.underlay.replies\n}\n",
    );
    // Terraform checks the zip against the mirror's zh: hash: a wrong one
    // refuses the install (so the right one below is what let it in).
    let zip_sha = run(Command::new("sha256sum").arg(format!("{name}_linux_amd64.zip")).current_dir(&dist));
    let zip_sha = zip_sha.split_whitespace().next().unwrap_or_default().to_string();
    let listings: Vec<(PathBuf, String)> = ["registry.terraform.io", "registry.opentofu.org"]
        .into_iter()
        .map(|host| {
            let listing = dist.join(format!("mirror/{host}/merak/merak/{PROVIDER_VERSION}.json"));
            let listed = std::fs::read_to_string(&listing).expect("read the version's archives");
            assert!(listed.contains(&format!("\"zh:{zip_sha}\"")), "{listed}");
            (listing, listed)
        })
        .collect();
    for (listing, listed) in &listings {
        std::fs::write(listing, listed.replace(&zip_sha, &"0".repeat(64))).expect("tamper with the hash");
    }
    let refused = ws.terraform(&["init"]);
    assert!(!refused.status.success(), "init installed an archive whose hash does not match");
    for (listing, listed) in &listings {
        std::fs::write(listing, listed).expect("restore the hash");
    }
    let _ = std::fs::remove_dir_all(ws.dir.join(".terraform"));
    let _ = std::fs::remove_file(ws.dir.join(".terraform.lock.hcl"));

    let init = ws.ok(&["init"]);
    assert!(
        init.contains(&format!("merak/merak v{PROVIDER_VERSION}")),
        "init did not install from the mirror:\n{init}"
    );
    let lock = std::fs::read_to_string(ws.dir.join(".terraform.lock.hcl")).expect("read the lock file");
    assert!(lock.contains(&format!("version = \"{PROVIDER_VERSION}\"")) && lock.contains("\"h1:"), "{lock}");
    // Installed from the zip: the provider and its agent are files of their
    // own in the working directory, not links to this build.
    let installed = ws.dir.join(".terraform/providers");
    let agent = find(&installed, "merak-agent").expect("the agent unpacked beside the provider");
    assert!(!std::fs::symlink_metadata(&agent).expect("agent metadata").file_type().is_symlink());

    ws.apply();
    // The agents it started answer: the two EPMs reach each other.
    assert_eq!(ws.ok(&["output", "-raw", "unexpected"]).trim(), "0");
    assert_ne!(ws.ok(&["output", "-raw", "replies"]).trim(), "0");
    assert_eq!(ws.plan().0, 0, "{}", ws.plan().1);
    // merak, unpacked beside them, finds the topology and its agent's build.
    let merak = find(&installed, "merak").expect("merak unpacked beside the provider");
    let status = Command::new(&merak)
        .arg("--state-dir")
        .arg(&ws.state_dir)
        .args(["status", &ws.name, "--json"])
        .output()
        .expect("run the installed merak");
    let document: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    assert!(
        status.status.success() && document["healthy"] == true,
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    ws.ok(&["destroy", "-auto-approve"]);
    ws.check_nothing_left().unwrap_or_else(|left| panic!("after destroy: {left}"));
}

/// The first file (not directory) called `name` under `dir`.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_file() && path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir()
            && let Some(found) = find(&path, name)
        {
            return Some(found);
        }
    }
    None
}
