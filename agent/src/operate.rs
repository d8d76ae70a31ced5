//! The Operate service: what people do inside a running emulation, served
//! by every agent beside its Agent and Overlay services. `Exec` runs a
//! command in a namespace of the agent's topology and streams its output;
//! `Capture` streams the packets of one interface as pcap. Either ends what
//! it started when the caller goes away (Ctrl-C in `merak`), so nothing of
//! an operator's outlives the call.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use merak_proto::agent::exec_output::Output;
use merak_proto::agent::operate_server::Operate;
use merak_proto::agent::{CaptureChunk, CaptureRequest, ExecOutput, ExecRequest};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::namespace_entry::{DEFAULT_PATH, NamespaceEntry, signal_group};
use crate::pcap;
use crate::server::EpmNamespace;

/// The most bytes one output or capture message carries.
const CHUNK: usize = 64 << 10;
/// Bytes kept of each packet unless asked for fewer (tcpdump's default).
const DEFAULT_SNAPLEN: u32 = 262_144;
/// How long captured packets wait before they are sent on.
const CAPTURE_FLUSH: Duration = Duration::from_millis(100);
/// How often a capture with no traffic looks whether its caller is gone.
const CAPTURE_POLL: libc::suseconds_t = 200_000;

pub struct OperateService {
    namespace: EpmNamespace,
}

impl OperateService {
    pub fn in_namespace(namespace: EpmNamespace) -> Self {
        OperateService { namespace }
    }

    /// Where `name` is: `None` for the agent's own namespace when the agent
    /// already runs in it, else the namespace's path. A name must belong to
    /// the agent's topology: a hosted agent (the local runtime's host, which
    /// sees every namespace of the machine) enters only names with its
    /// topology's prefix; an agent in a pod sees only its pod's.
    fn namespace_path(&self, name: &str) -> Result<Option<PathBuf>, Status> {
        if name.is_empty() {
            return Ok(match &self.namespace {
                EpmNamespace::Held(_) => None,
                EpmNamespace::At(path) => Some(path.clone()),
            });
        }
        if !is_namespace_name(name) {
            return Err(Status::invalid_argument(format!("{name:?} is not a namespace name")));
        }
        if let EpmNamespace::At(own) = &self.namespace {
            let prefix = topology_prefix(own);
            if !name.starts_with(&prefix) {
                return Err(Status::permission_denied(format!(
                    "namespace {name} is not of this agent's topology (its namespaces start with {prefix})"
                )));
            }
        }
        let path = crate::netns::path_of(name);
        if !path.exists() {
            return Err(Status::not_found(format!("there is no namespace {name}")));
        }
        Ok(Some(path))
    }
}

/// A name `ip netns` could have made: no path separators, not hidden.
fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `merak-lab.` of `/run/netns/merak-lab.epm-3`: what every namespace of
/// the topology's name starts with.
fn topology_prefix(own: &Path) -> String {
    let name = own.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.split_once('.') {
        Some((topology, _)) => format!("{topology}."),
        None => format!("{name}."),
    }
}

fn output(output: Output) -> Result<ExecOutput, Status> {
    Ok(ExecOutput { output: Some(output) })
}

#[tonic::async_trait]
impl Operate for OperateService {
    type ExecStream = ReceiverStream<Result<ExecOutput, Status>>;
    type CaptureStream = ReceiverStream<Result<CaptureChunk, Status>>;

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        let ExecRequest { namespace, argv } = request.into_inner();
        let netns = self.namespace_path(&namespace)?;
        let (program, arguments) = argv.split_first().ok_or_else(|| Status::invalid_argument("no command to run"))?;
        let entry = netns
            .as_deref()
            .map(NamespaceEntry::prepare)
            .transpose()
            .map_err(|e| Status::unavailable(format!("opening namespace {namespace}: {e}")))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(arguments)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure only makes syscalls (see NamespaceEntry::enter).
        unsafe {
            command.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                match &entry {
                    Some(entry) => entry.enter(),
                    None => Ok(()),
                }
            });
        }
        let (sender, receiver) = mpsc::channel(16);
        match command.spawn() {
            Ok(child) => {
                tracing::info!(namespace, ?argv, "exec");
                tokio::spawn(relay(child, sender));
            }
            Err(error) => {
                // As a shell says it: 127 for a command not found, 126 for one
                // that cannot run.
                let code = if error.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
                let said = format!("merak: cannot run {program}: {error}\n");
                let _ = sender.send(output(Output::Stderr(said.into_bytes()))).await;
                let _ = sender.send(output(Output::ExitCode(code))).await;
            }
        }
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn capture(&self, request: Request<CaptureRequest>) -> Result<Response<Self::CaptureStream>, Status> {
        let CaptureRequest { namespace, interface, count, snaplen } = request.into_inner();
        let netns = self.namespace_path(&namespace)?;
        let netns = netns
            .map(File::open)
            .transpose()
            .map_err(|e| Status::unavailable(format!("opening namespace {namespace}: {e}")))?;
        let snaplen = if snaplen == 0 { DEFAULT_SNAPLEN } else { snaplen.min(DEFAULT_SNAPLEN) };
        let (sender, receiver) = mpsc::channel(8);
        let (opened, open_result) = oneshot::channel();
        // A thread of its own: it enters the namespace, which must never
        // happen to a thread the async runtime reuses.
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || match open_capture(netns, &interface) {
                Ok((socket, interface)) => {
                    let _ = opened.send(Ok(interface.clone()));
                    capture(&socket, &interface, snaplen, count, &sender);
                }
                Err(status) => {
                    let _ = opened.send(Err(status));
                }
            })
            .map_err(|e| Status::resource_exhausted(format!("starting a capture thread: {e}")))?;
        let interface = open_result.await.map_err(|_| Status::internal("the capture thread ended early"))??;
        tracing::info!(namespace, interface, count, "capture");
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Passes the command's output on as it comes, then its exit; kills its
/// process group if the caller goes away first.
async fn relay(mut child: tokio::process::Child, sender: mpsc::Sender<Result<ExecOutput, Status>>) {
    let pid = child.id();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut stdout_buffer = vec![0u8; CHUNK];
    let mut stderr_buffer = vec![0u8; CHUNK];
    let caller_gone = loop {
        if stdout.is_none() && stderr.is_none() {
            break false;
        }
        let chunk = tokio::select! {
            read = read_some(&mut stdout, &mut stdout_buffer) => match read {
                Some(n) => output(Output::Stdout(stdout_buffer[..n].to_vec())),
                None => { stdout = None; continue; }
            },
            read = read_some(&mut stderr, &mut stderr_buffer) => match read {
                Some(n) => output(Output::Stderr(stderr_buffer[..n].to_vec())),
                None => { stderr = None; continue; }
            },
            () = sender.closed() => break true,
        };
        if sender.send(chunk).await.is_err() {
            break true;
        }
    };
    let status = if caller_gone {
        None
    } else {
        tokio::select! {
            status = child.wait() => Some(status),
            () = sender.closed() => None,
        }
    };
    match status {
        Some(Ok(status)) => {
            let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            let _ = sender.send(output(Output::ExitCode(code))).await;
        }
        Some(Err(error)) => {
            let _ = sender.send(Err(Status::internal(format!("waiting for the command: {error}")))).await;
        }
        None => {
            tracing::info!(pid, "the caller went away: the command is killed");
            signal_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

/// Some bytes from a pipe, or `None` once it is closed; a closed pipe
/// (`None`) never answers.
async fn read_some(pipe: &mut Option<impl AsyncRead + Unpin>, buffer: &mut [u8]) -> Option<usize> {
    match pipe {
        Some(pipe) => match pipe.read(buffer).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

fn last_os_error(what: &str) -> Status {
    Status::internal(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// On the calling thread (which it moves into `netns`): a packet socket
/// bound to `interface`, or to the namespace's one interface besides lo.
fn open_capture(netns: Option<File>, interface: &str) -> Result<(OwnedFd, String), Status> {
    if let Some(netns) = &netns {
        crate::netns::enter(netns).map_err(|e| Status::unavailable(format!("entering the namespace: {e}")))?;
    }
    let interfaces = interfaces();
    let chosen = if interface.is_empty() {
        let candidates: Vec<&(String, u32)> = interfaces.iter().filter(|(name, _)| name != "lo").collect();
        match candidates.as_slice() {
            [only] => (*only).clone(),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "say which interface to capture: this namespace has {}",
                    names(&interfaces)
                )));
            }
        }
    } else {
        interfaces.iter().find(|(name, _)| name == interface).cloned().ok_or_else(|| {
            Status::not_found(format!("there is no interface {interface} here; there are {}", names(&interfaces)))
        })?
    };
    let index = i32::try_from(chosen.1).map_err(|_| Status::internal("an interface index out of range"))?;
    // Protocol 0 until bound: no packet of another interface slips in.
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_os_error("opening a packet socket"));
    }
    // SAFETY: fd is a descriptor just opened and not owned elsewhere.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    address.sll_ifindex = index;
    // SAFETY: bind(2) with a sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(last_os_error(&format!("binding a packet socket to {}", chosen.0)));
    }
    let timeout = libc::timeval { tv_sec: 0, tv_usec: CAPTURE_POLL };
    // SAFETY: setsockopt(2) with a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(last_os_error("setting the capture's receive timeout"));
    }
    Ok((socket, chosen.0))
}

/// The interfaces of the calling thread's namespace: (name, index).
fn interfaces() -> Vec<(String, u32)> {
    let mut found = Vec::new();
    // SAFETY: if_nameindex(3) returns an array ended by a zero entry, or
    // null; it is freed once read.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return found;
        }
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            found.push((CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned(), (*entry).if_index));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    found.sort();
    found
}

fn names(interfaces: &[(String, u32)]) -> String {
    let names: Vec<&str> = interfaces.iter().map(|(name, _)| name.as_str()).collect();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

/// Reads packets until `count` (0: no end) or the caller goes away, and
/// sends them on as pcap, the file header first.
fn capture(
    socket: &OwnedFd,
    interface: &str,
    snaplen: u32,
    count: u64,
    sender: &mpsc::Sender<Result<CaptureChunk, Status>>,
) {
    let send = |pcap: Vec<u8>, interface: String| sender.blocking_send(Ok(CaptureChunk { pcap, interface })).is_ok();
    if !send(pcap::file_header(snaplen, pcap::LINKTYPE_ETHERNET).to_vec(), interface.to_string()) {
        return;
    }
    // snaplen is at most DEFAULT_SNAPLEN: a bounded buffer.
    let mut packet = vec![0u8; snaplen as usize];
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut flushed = Instant::now();
    let mut seen = 0u64;
    loop {
        if sender.is_closed() {
            return;
        }
        // SAFETY: recv(2) into a buffer of the length given; MSG_TRUNC makes
        // it return the packet's whole length.
        let received =
            unsafe { libc::recv(socket.as_raw_fd(), packet.as_mut_ptr().cast(), packet.len(), libc::MSG_TRUNC) };
        if received < 0 {
            let error = std::io::Error::last_os_error();
            let quiet = matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted);
            if !quiet {
                let _ = sender.blocking_send(Err(Status::internal(format!("capturing on {interface}: {error}"))));
                return;
            }
        } else {
            let original = received.unsigned_abs();
            let kept = original.min(packet.len());
            pcap::append_record(&mut chunk, SystemTime::now(), &packet[..kept], original);
            seen += 1;
        }
        let done = count != 0 && seen >= count;
        let due = chunk.len() >= CHUNK || flushed.elapsed() >= CAPTURE_FLUSH;
        if !chunk.is_empty() && (done || due) {
            if !send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)), String::new()) {
                return;
            }
            flushed = Instant::now();
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_paths_in_them_are_refused() {
        assert!(is_namespace_name("merak-lab.vm.web.3"));
        for bad in ["", "../etc", "a/b", ".hidden", "sp ace", &"x".repeat(256)] {
            assert!(!is_namespace_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_hosted_agent_enters_its_topology_only() {
        assert_eq!(topology_prefix(Path::new("/run/netns/merak-lab.epm-3")), "merak-lab.");
        let service = OperateService::in_namespace(EpmNamespace::At("/run/netns/merak-lab.epm-3".into()));
        let refused = service.namespace_path("merak-other.epm-0").expect_err("another topology's namespace");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let missing = service.namespace_path("merak-lab.vm.web.999999").expect_err("no such namespace");
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(service.namespace_path("").expect("its own"), Some(PathBuf::from("/run/netns/merak-lab.epm-3")));
    }
}
