//! Which build of merak-agent is running: its version and a digest of its
//! executable, so a client that installed another build (an upgrade, a
//! rebuild) can tell the agent it talks to is not the one installed.

use std::io::{self, Read};
use std::path::Path;
use std::sync::OnceLock;

/// The build id of the executable at `path`.
pub fn id_of(path: &Path) -> io::Result<String> {
    // FNV-1a over the file: not a security measure, an identity that
    // changes with any rebuild (and costs milliseconds).
    let mut file = std::fs::File::open(path)?;
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        for byte in &buffer[..read] {
            digest = (digest ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{}-{digest:016x}", env!("CARGO_PKG_VERSION")))
}

/// This process's build id (read once); empty if the executable cannot be read.
pub fn current() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| id_of(Path::new("/proc/self/exe")).unwrap_or_default())
}
