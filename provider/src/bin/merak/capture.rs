//! `merak capture`: the packets of one interface of a node, captured by the
//! node's agent and written here as pcap.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use merak_proto::agent::CaptureRequest;
use merak_provider::controller::Controller;
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub struct Options {
    pub file: Option<PathBuf>,
    /// 0: until interrupted.
    pub count: u64,
    /// 0: the agent's default.
    pub snaplen: u32,
}

pub async fn run(controller: &Controller, topology: &str, target: &str, options: Options) -> anyhow::Result<ExitCode> {
    let (node, interface) = target.split_once(':').unwrap_or((target, ""));
    if options.file.is_none() && std::io::stdout().is_terminal() {
        anyhow::bail!(
            "pcap is binary: write it to a file with -w FILE, or pipe it on (| tshark -r -, | wireshark -k -i -)"
        );
    }
    let node = controller.node(topology, node).await?;
    let mut client =
        controller.operate(topology, &node.route).await.map_err(|e| super::exec::unreachable(&node, &e))?;
    let request = CaptureRequest {
        namespace: node.route.namespace.clone(),
        interface: interface.to_string(),
        count: options.count,
        snaplen: options.snaplen,
    };
    let mut chunks =
        client.capture(request).await.map_err(|status| super::exec::agent_error(&node, &status))?.into_inner();
    let mut out: Box<dyn AsyncWrite + Unpin + Send> = match &options.file {
        Some(path) => {
            Box::new(tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(tokio::io::stdout()),
    };
    let mut stop = std::pin::pin!(super::interrupted());
    let mut packets = 0u64;
    let mut header_seen = false;
    loop {
        let chunk = tokio::select! {
            chunk = chunks.message() => chunk.map_err(|status| super::exec::agent_error(&node, &status))?,
            () = &mut stop => None,
        };
        let Some(chunk) = chunk else { break };
        if header_seen {
            packets += records_in(&chunk.pcap);
        } else {
            header_seen = true;
            eprintln!("merak: capturing on {} {}", node.name, chunk.interface);
        }
        out.write_all(&chunk.pcap).await?;
        out.flush().await?;
    }
    out.shutdown().await?;
    eprintln!("merak: {packets} packets captured");
    Ok(ExitCode::SUCCESS)
}

/// The pcap records in a chunk after the first (the agent sends whole records).
fn records_in(chunk: &[u8]) -> u64 {
    let mut at = 0usize;
    let mut records = 0;
    while let Some(kept) = chunk.get(at + 8..at + 12).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes) {
        at = at.saturating_add(merak_agent::pcap::RECORD_HEADER_LEN).saturating_add(kept as usize);
        records += 1;
    }
    records
}
