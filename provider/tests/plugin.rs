//! The provider binary as go-plugin hosts see it: the cookie, the handshake
//! line, the transports, health, the controller, and debug mode.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use merak_proto::go_plugin::{Empty, grpc_controller_client::GrpcControllerClient};
use merak_proto::tfplugin6::{get_provider_schema, provider_client::ProviderClient};
use merak_tfplugin::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const PROVIDER: &str = env!("CARGO_BIN_EXE_terraform-provider-merak");

/// A provider process that is killed if a test fails before it exits, and
/// its socket directory removed (a killed provider cannot).
struct Plugin(Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("plugin-merak-{}", self.0.id())));
    }
}

fn start(envs: &[(&str, &str)]) -> (Plugin, String) {
    let mut command = Command::new(PROVIDER);
    command
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env_remove("PLUGIN_CLIENT_CERT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("handshake line");
    (Plugin(child), line.trim_end().to_string())
}

#[test]
fn refuses_to_run_without_the_cookie() {
    let output = Command::new(PROVIDER).env_remove(MAGIC_COOKIE_KEY).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("plugin for Terraform"));
}

#[tokio::test]
async fn tcp_handshake_health_schema_and_shutdown() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let (mut plugin, line) =
        start(&[("MERAK_PLUGIN_TRANSPORT", "tcp"), ("PLUGIN_MIN_PORT", &port), ("PLUGIN_MAX_PORT", &port)]);
    assert_eq!(line, format!("1|6|tcp|127.0.0.1:{port}|grpc|"));

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: "plugin".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let schema = ProviderClient::new(channel.clone())
        .get_provider_schema(get_provider_schema::Request {})
        .await
        .unwrap()
        .into_inner();
    let topology = &schema.resource_schemas["merak_topology"];
    let attributes: Vec<_> = topology.block.as_ref().unwrap().attributes.iter().map(|a| a.name.as_str()).collect();
    assert!(attributes.contains(&"ready_epms") && attributes.contains(&"epms"));

    GrpcControllerClient::new(channel).shutdown(Empty {}).await.unwrap();
    // The client's connection is still open: the plugin must exit anyway.
    let status = tokio::task::spawn_blocking(move || plugin.0.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

#[test]
fn unix_socket_by_default_in_a_private_directory() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let (_plugin, line) = start(&[]);
    let parts: Vec<_> = line.split('|').collect();
    assert_eq!(&parts[..3], ["1", "6", "unix"]);
    assert_eq!(&parts[4..], ["grpc", ""]);
    let socket = std::path::Path::new(parts[3]);
    assert!(socket.metadata().unwrap().file_type().is_socket());
    let dir_mode = socket.parent().unwrap().metadata().unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}

#[test]
fn a_killed_providers_socket_directory_is_removed_by_the_next() {
    let (mut killed, line) = start(&[]);
    let dir = std::path::PathBuf::from(line.split('|').nth(3).unwrap()).parent().unwrap().to_owned();
    killed.0.kill().unwrap(); // SIGKILL: it cannot clean up after itself
    killed.0.wait().unwrap();
    assert!(dir.exists());
    let (_next, _) = start(&[]);
    assert!(!dir.exists(), "{} outlived its provider", dir.display());
}

#[test]
fn auto_mtls_sends_a_localhost_certificate() {
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert =
        rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&client_key).unwrap();
    let (_plugin, line) = start(&[("PLUGIN_CLIENT_CERT", &client_cert.pem())]);
    let certificate = line.rsplit('|').next().unwrap();
    assert!(!certificate.is_empty() && !certificate.ends_with('='));
    let der = base64::engine::general_purpose::STANDARD_NO_PAD.decode(certificate).unwrap();
    assert_eq!(der[0], 0x30, "a DER SEQUENCE");
    assert!(der.windows(9).any(|w| w == b"localhost"));
}

#[test]
fn debug_mode_prints_reattach_settings() {
    let mut child =
        Command::new(PROVIDER).arg("--debug").env_remove(MAGIC_COOKIE_KEY).stdout(Stdio::piped()).spawn().unwrap();
    let mut plugin_stdout = BufReader::new(child.stdout.take().unwrap());
    let _plugin = Plugin(child);
    let reattach = (0..5)
        .filter_map(|_| {
            let mut line = String::new();
            plugin_stdout.read_line(&mut line).ok()?;
            line.trim().strip_prefix("TF_REATTACH_PROVIDERS=").map(|s| s.trim_matches('\'').to_string())
        })
        .next()
        .expect("a TF_REATTACH_PROVIDERS line");
    let json: serde_json::Value = serde_json::from_str(&reattach).unwrap();
    let entry = &json["registry.terraform.io/merak/merak"];
    assert_eq!(entry["ProtocolVersion"], 6);
    assert_eq!(entry["Addr"]["Network"], "unix");
}
