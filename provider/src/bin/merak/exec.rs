//! `merak exec`: a command in a node's namespace, run by the node's agent,
//! its output written here as it comes and its exit code passed through.

use std::process::ExitCode;

use merak_proto::agent::ExecRequest;
use merak_proto::agent::exec_output::Output;
use merak_provider::controller::{Controller, Node};
use tokio::io::AsyncWriteExt;

pub async fn run(controller: &Controller, topology: &str, node: &str, argv: Vec<String>) -> anyhow::Result<ExitCode> {
    let node = controller.node(topology, node).await?;
    let mut client = controller.operate(topology, &node.route).await.map_err(|e| unreachable(&node, &e))?;
    let request = ExecRequest { namespace: node.route.namespace.clone(), argv };
    let mut outputs = client.exec(request).await.map_err(|status| agent_error(&node, &status))?.into_inner();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut stop = std::pin::pin!(super::interrupted());
    loop {
        let message = tokio::select! {
            message = outputs.message() => message.map_err(|status| agent_error(&node, &status))?,
            // Dropping the call makes the agent kill the command.
            () = &mut stop => return Ok(ExitCode::from(130)),
        };
        match message.and_then(|m| m.output) {
            Some(Output::Stdout(bytes)) => {
                stdout.write_all(&bytes).await?;
                stdout.flush().await?;
            }
            Some(Output::Stderr(bytes)) => {
                stderr.write_all(&bytes).await?;
                stderr.flush().await?;
            }
            Some(Output::ExitCode(code)) => return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
            None => anyhow::bail!("the agent of {} ended the call before the command's exit", node.route.agent),
        }
    }
}

/// The node's agent cannot be reached.
pub fn unreachable(node: &Node, error: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach the agent of {}, which serves {}: {error}. Is the topology up? `merak status` tells; \
         `terraform apply` revives its agents",
        node.route.agent,
        node.name
    )
}

/// What went wrong, said of the node and the agent that serves it.
pub fn agent_error(node: &Node, status: &tonic::Status) -> anyhow::Error {
    let agent = &node.route.agent;
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => anyhow::anyhow!(
            "the agent of {agent}, which serves {}, does not answer ({}); `terraform apply` revives it",
            node.name,
            status.message()
        ),
        _ => anyhow::anyhow!("{} (agent of {agent}): {}", node.name, status.message()),
    }
}
