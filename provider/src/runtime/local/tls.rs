//! The local runtime's certificates per topology, under
//! `<state_dir>/<topology>/tls/` (mode 0700; keys 0600, root's only): the
//! topology's CA (`ca.pem`, `ca.key`), the agents' identity (`agent.pem`,
//! `agent.key`, what the agent host presents on TCP) and the controller's
//! (`controller.pem`, `controller.key`, what this provider presents).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use merak_agent::pki::{Authority, Role};
use tokio_rustls::TlsConnector;

use crate::runtime::RuntimeError;

fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    io::Write::write_all(&mut file, contents.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

const FILES: [&str; 6] = ["ca.pem", "ca.key", "agent.pem", "agent.key", "controller.pem", "controller.key"];

/// Makes the topology's CA and identities unless all are there. A partial
/// set (a kill mid-way) is made anew: nothing was issued from it yet that
/// outlives a host restart.
pub(super) fn ensure(dir: &Path, topology: &str) -> Result<(), RuntimeError> {
    if FILES.iter().all(|f| dir.join(f).exists()) {
        return Ok(());
    }
    let io = |what: &str| {
        let what = format!("{what} in {}", dir.display());
        move |e| RuntimeError::io(what, e)
    };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("creating the TLS directory"))?;
    let pki = |e: merak_agent::pki::PkiError| {
        RuntimeError::Unavailable(format!("making the certificates of {topology}: {e}"))
    };
    let (authority, authority_key) = Authority::create(topology).map_err(pki)?;
    let agent = authority.issue(Role::Agent).map_err(pki)?;
    let controller = authority.issue(Role::Controller).map_err(pki)?;
    for (name, contents) in [
        ("ca.key", &authority_key),
        ("agent.pem", &agent.certificate),
        ("agent.key", &agent.key),
        ("controller.pem", &controller.certificate),
        ("controller.key", &controller.key),
        // Last: its presence completes the set.
        ("ca.pem", &authority.certificate),
    ] {
        write_private(&dir.join(name), contents).map_err(io(&format!("writing {name}")))?;
    }
    Ok(())
}

/// The controller's connector to the topology's agents.
pub(super) fn connector(dir: &Path) -> Result<TlsConnector, RuntimeError> {
    let read = |name: &str| {
        fs::read(dir.join(name)).map_err(|e| RuntimeError::io(format!("reading {}", dir.join(name).display()), e))
    };
    merak_agent::tls::connector(&read("ca.pem")?, &read("controller.pem")?, &read("controller.key")?)
        .map_err(|e| RuntimeError::Unavailable(format!("the controller's TLS identity in {}: {e}", dir.display())))
}
