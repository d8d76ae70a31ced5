//! The provider binary. Terraform starts it with the go-plugin magic cookie;
//! `--debug` runs it standalone for Terraform to attach to;
//! `--generate-docs DIR` writes the registry docs from the schema;
//! `--destroy-topology NAME` removes a topology of the local runtime without
//! Terraform (for a lost state, or a test's cleanup).

use anyhow::Context;
use merak_tfplugin::plugin::{self, ServeOptions, Transport};
use merak_tfplugin::server::ProviderService;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    merak_provider::logging::init(args.is_empty());
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--generate-docs", dir] => merak_provider::docs::write_all(std::path::Path::new(dir)),
        ["--debug"] => run(true),
        ["--destroy-topology", name, "--state-dir", dir] => destroy_topology(name, dir),
        ["--destroy-topology", name] => destroy_topology(name, merak_provider::config::DEFAULT_STATE_DIR),
        [] => {
            if std::env::var(plugin::MAGIC_COOKIE_KEY).as_deref() != Ok(plugin::MAGIC_COOKIE_VALUE) {
                eprintln!(
                    "This binary is a plugin for Terraform and OpenTofu, not meant to be run by hand.\n\
                     Use it from a Terraform configuration (see the README), or run it with --debug\n\
                     and attach Terraform through TF_REATTACH_PROVIDERS."
                );
                return std::process::ExitCode::FAILURE;
            }
            run(false)
        }
        _ => {
            eprintln!(
                "usage: terraform-provider-merak [--debug | --generate-docs DIR | --destroy-topology NAME [--state-dir DIR]]"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Everything of one topology off this host, as `terraform destroy` would:
/// agents, namespaces, records, and the host limits it raised.
fn destroy_topology(name: &str, state_dir: &str) -> anyhow::Result<()> {
    let controller = merak_provider::config::local_controller(
        state_dir.into(),
        "merak-agent".into(),
        merak_provider::runtime::local::AgentTransport::Unix,
    );
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    tokio
        .block_on(controller.destroy_topology(name))
        .with_context(|| format!("destroying topology {name} of {state_dir}"))
}

fn run(debug: bool) -> anyhow::Result<()> {
    if !debug {
        // Terraform cancels through StopProvider; a Ctrl-C in the terminal
        // reaches the whole process group and must not kill us mid-apply.
        // SAFETY: setting a signal disposition to SIG_IGN.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        }
    }
    let transport = match std::env::var("MERAK_PLUGIN_TRANSPORT").as_deref() {
        Ok("tcp") => Transport::Tcp,
        _ => Transport::Unix,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(plugin::serve(ProviderService::new(&merak_provider::PROVIDER), ServeOptions { transport, debug }))
}
