//! Named network namespaces, made the way iproute2 makes them (a bind mount of
//! the namespace under `/run/netns`) but without spawning a process: a worker
//! thread enters or creates the namespace, opens the netlink socket there, and
//! returns to its own namespace. A netlink socket stays bound to the namespace it was
//! opened in, so the returned [`Netlink`] works inside that namespace from any
//! thread.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::netdev::Netlink;

/// Where named network namespaces live (iproute2's convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name} already exists")]
    AlreadyExists { name: String },
    #[error("network namespace {name} does not exist")]
    NotFound { name: String },
    #[error("{op} for network namespace {name}: {source}")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    fn io(op: &'static str, name: &str, source: io::Error) -> Self {
        NetnsError::Io { op, name: name.to_string(), source }
    }
}

/// Settings applied inside a namespace when it is created.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetnsOptions {
    /// Turn IPv6 off for every device the namespace will hold. Underlay and
    /// IPv4 emulation never need it, and IPv6 autoconfiguration (DAD, router
    /// solicitation, MLD) on every new port is what makes creation superlinear.
    pub disable_ipv6: bool,
    /// Route between interfaces (`net.ipv4.ip_forward`), for router namespaces.
    pub forwarding: bool,
    /// Announce a device's addresses when it comes up (gratuitous ARP,
    /// `arp_notify`), as container networks do for a new pod: neighbours
    /// that cached the MAC of an address's previous holder learn the new
    /// one at once instead of after their entry goes stale.
    pub announce: bool,
    /// Spread ECMP routes' flows by their 5-tuple, not by addresses only,
    /// so flows between two hosts take different paths, as a data center's
    /// switches do.
    pub multipath_l4_hash: bool,
    /// This namespace's ECMP hash seed (`fib_multipath_hash_seed`; 0: the
    /// kernel's, which every namespace shares). Routers in series that hash
    /// alike pick alike, so the second never spreads what the first did:
    /// each router gets its own, as a fabric's switches do. Kernels without
    /// the knob (before 6.11) keep theirs.
    pub multipath_hash_seed: u32,
    /// Skip next hops whose link has lost its carrier
    /// (`ignore_routes_with_linkdown`), as a router stops using a dead port.
    pub skip_dead_links: bool,
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Whether a namespace of this name is there: its file holds a namespace
/// mount. A plain file (a creation killed between making the mount point
/// and mounting on it) is not one; creating the namespace replaces it.
pub fn exists(name: &str) -> bool {
    is_namespace_mount(&path_of(name))
}

/// NSFS_MAGIC: the file system a bind-mounted namespace file is on.
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

fn is_namespace_mount(path: &Path) -> bool {
    let Ok(target) = c_path(path) else { return false };
    // SAFETY: statfs(2) on a NUL-terminated path into a zeroed struct.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(target.as_ptr(), &mut info) }) == 0 && info.f_type as libc::c_long == NSFS_MAGIC
}

/// Names of every named namespace whose name starts with `prefix`.
pub fn list_with_prefix(prefix: &str) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Makes `/run/netns` a mount point of its own with *private* propagation.
/// iproute2 makes it shared, so that namespace mounts propagate to other
/// mount namespaces; but with shared propagation every unmount walks the
/// peer group, and deleting namespaces became O(n) each: measured here, 200
/// of 17,000 took 28 s shared and 17,000 took 8 s private. Nothing in the
/// emulation needs propagation. Done once per process.
pub fn prepare_run_dir() -> io::Result<()> {
    static PREPARED: OnceLock<Result<(), String>> = OnceLock::new();
    PREPARED.get_or_init(|| make_run_dir_private().map_err(|e| e.to_string())).clone().map_err(io::Error::other)
}

fn make_run_dir_private() -> io::Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR)?;
    let dir = c_path(Path::new(NETNS_RUN_DIR))?;
    let make_private = || {
        // SAFETY: plain mount(2) call with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_PRIVATE | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    };
    match make_private() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // SAFETY: as above.
            let rc = unsafe {
                libc::mount(
                    dir.as_ptr(),
                    dir.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            make_private()
        }
        Err(e) => Err(e),
    }
}

/// Creates the named namespace and returns a netlink connection inside it.
pub async fn create(name: &str, options: NetnsOptions) -> Result<Netlink, NetnsError> {
    prepare_run_dir().map_err(|e| NetnsError::io("prepare /run/netns", name, e))?;
    let owned = name.to_string();
    let fd = on_worker(move || create_on_this_thread(&owned, options)).await?;
    Netlink::from_fd(fd).map_err(|e| NetnsError::io("open netlink", name, e))
}

/// Makes a persistent tap device named `name` inside the namespace (a tap
/// cannot be made over netlink: EOPNOTSUPP).
pub async fn create_tap(namespace: &str, name: &str) -> Result<(), NetnsError> {
    let ns = open_fd(namespace)?;
    let (owned_namespace, owned_name) = (namespace.to_string(), name.to_string());
    on_worker(move || {
        enter(&ns).map_err(|e| NetnsError::io("setns", &owned_namespace, e))?;
        persistent_tap(&owned_name).map_err(|e| NetnsError::io("create tap", &owned_namespace, e))
    })
    .await
}

/// Turns a device's transmit checksum offload on or off, as
/// `ethtool -K <device> tx on|off` does, inside the named namespace.
pub async fn set_tx_checksum(namespace: &str, device: &str, on: bool) -> Result<(), NetnsError> {
    let ns = open_fd(namespace)?;
    let (owned_namespace, owned_device) = (namespace.to_string(), device.to_string());
    on_worker(move || {
        enter(&ns).map_err(|e| NetnsError::io("setns", &owned_namespace, e))?;
        let op = if on { "turn tx checksum offload on" } else { "turn tx checksum offload off" };
        ethtool_set_tx_checksum(&owned_device, on)
            .map_err(|e| NetnsError::io(op, &format!("{owned_namespace}: {owned_device}"), e))
    })
    .await
}

fn ethtool_set_tx_checksum(device: &str, on: bool) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    if device.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("device name {device:?} is too long")));
    }
    // SAFETY: a plain socket, owned at once.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `socket` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: u32::from(on) };
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data: &mut value, _pad: [0; 16] };
    request.name[..device.len()].copy_from_slice(device.as_bytes());
    // SAFETY: SIOCETHTOOL with an ifreq pointing at a live ethtool_value.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn persistent_tap(name: &str) -> io::Result<()> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("tap name {name:?} is too long")));
    }
    let tun = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the two tun ioctls with a properly laid out ifreq.
    unsafe {
        if libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Opens a netlink connection inside an existing named namespace.
pub async fn open(name: &str) -> Result<Netlink, NetnsError> {
    let ns = open_fd(name)?;
    open_in(ns, name).await
}

/// A namespace's identity: the (device, inode) of its nsfs file, which a
/// namespace made anew under the same name does not share.
pub type NamespaceId = (u64, u64);

/// Opens a netlink connection inside the namespace mounted at `path` (any
/// path, e.g. a pod's), and tells which namespace that is.
pub async fn open_path(path: &Path) -> Result<(Netlink, NamespaceId), NetnsError> {
    use std::os::unix::fs::MetadataExt;
    let name = path.display().to_string();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NetnsError::NotFound { name }),
        Err(e) => return Err(NetnsError::io("open", &name, e)),
    };
    let meta = file.metadata().map_err(|e| NetnsError::io("stat", &name, e))?;
    let id = (meta.dev(), meta.ino());
    Ok((open_in(file.into(), &name).await?, id))
}

/// The identity of the namespace mounted at `path`, if it is mounted.
pub fn id_of(path: &Path) -> Option<NamespaceId> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

async fn open_in(ns: OwnedFd, name: &str) -> Result<Netlink, NetnsError> {
    let owned = name.to_string();
    let fd = on_worker(move || {
        enter(&ns).map_err(|e| NetnsError::io("setns", &owned, e))?;
        netlink_socket().map_err(|e| NetnsError::io("open netlink", &owned, e))
    })
    .await?;
    Netlink::from_fd(fd).map_err(|e| NetnsError::io("open netlink", name, e))
}

/// A file descriptor of the named namespace, for `setns` or `IFLA_NET_NS_FD`.
pub fn open_fd(name: &str) -> Result<OwnedFd, NetnsError> {
    match File::open(path_of(name)) {
        Ok(file) => Ok(file.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(NetnsError::NotFound { name: name.to_string() }),
        Err(e) => Err(NetnsError::io("open", name, e)),
    }
}

/// Moves the calling thread into the namespace. Only call this on a thread
/// you own (never on an async runtime worker), or right before `exec`.
pub fn enter(ns: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: setns(2) on a valid namespace fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a TCP connection from inside the named namespace (a socket stays
/// in the namespace it was made in, so the stream works from any thread).
pub async fn connect_in(
    namespace: &str,
    address: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<std::net::TcpStream, NetnsError> {
    let ns = open_fd(namespace)?;
    let owned = namespace.to_string();
    on_worker(move || {
        enter(&ns).map_err(|e| NetnsError::io("setns", &owned, e))?;
        std::net::TcpStream::connect_timeout(&address, timeout).map_err(|e| NetnsError::io("connect", &owned, e))
    })
    .await
}

/// Kills (SIGKILL) every process that runs in one of the named namespaces;
/// how many. Namespaces that do not exist are skipped.
pub fn kill_processes_in(names: &[impl AsRef<str>]) -> io::Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let wanted: std::collections::HashSet<NamespaceId> =
        names.iter().filter_map(|n| id_of(&path_of(n.as_ref()))).collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let mut killed = 0;
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else { continue };
        // A process that exits meanwhile has no ns/net any more: skip it.
        let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net")) else { continue };
        if wanted.contains(&(meta.dev(), meta.ino())) && pid > 1 {
            // SAFETY: kill(2); a process gone since is ESRCH.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    Ok(killed)
}

/// Removes the name. The kernel frees the namespace, and every device in
/// it, once nothing else (a process, an open fd) holds it. Deleting a name
/// that does not exist is not an error.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    let path = path_of(name);
    let c = c_path(&path).map_err(|e| NetnsError::io("umount", name, e))?;
    // SAFETY: umount2(2) with a valid path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (half-made); ENOENT: already gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(NetnsError::io("umount", name, e));
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetnsError::io("remove", name, e)),
    }
}

fn create_on_this_thread(name: &str, options: NetnsOptions) -> Result<OwnedFd, NetnsError> {
    let path = path_of(name);
    let mut created = OpenOptions::new().write(true).create_new(true).open(&path);
    if matches!(&created, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) && !is_namespace_mount(&path) {
        // A mount point left without its mount by a kill: take its place.
        fs::remove_file(&path).map_err(|e| NetnsError::io("remove a mount point left unmounted", name, e))?;
        created = OpenOptions::new().write(true).create_new(true).open(&path);
    }
    match created {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::AlreadyExists { name: name.to_string() });
        }
        Err(e) => return Err(NetnsError::io("create mount point", name, e)),
    }
    let result = (|| {
        // SAFETY: unshare(2) affects only this thread, which returns home after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::io("unshare", name, io::Error::last_os_error()));
        }
        let target = c_path(&path).map_err(|e| NetnsError::io("bind mount", name, e))?;
        // SAFETY: bind mount of this thread's namespace onto the new file.
        let rc = unsafe {
            libc::mount(
                c"/proc/thread-self/ns/net".as_ptr(),
                target.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(NetnsError::io("bind mount", name, io::Error::last_os_error()));
        }
        configure_this_namespace(name, &options)?;
        netlink_socket().map_err(|e| NetnsError::io("open netlink", name, e))
    })();
    if result.is_err() {
        let _ = delete(name);
    }
    result
}

/// Applies `options` to the network namespace of the calling thread (its
/// /proc/sys/net): a namespace being made, or the one a pod's agent runs
/// in. `name` is for errors.
pub fn configure_this_namespace(name: &str, options: &NetnsOptions) -> Result<(), NetnsError> {
    if options.disable_ipv6 {
        // /proc/sys/net belongs to the namespace of the thread that opens it.
        for knob in ["all", "default"] {
            let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
            if let Err(e) = fs::write(&path, "1") {
                // No IPv6 in this kernel at all is fine.
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(NetnsError::io("disable IPv6", name, e));
                }
            }
        }
    }
    if options.forwarding {
        fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| NetnsError::io("enable forwarding", name, e))?;
    }
    if options.multipath_l4_hash {
        // Policy 3 with the 5-tuple's fields hashes each packet here,
        // with this namespace's seed. Policy 1 would reuse the hash a
        // packet carries from its socket (veths keep it), so every
        // router in series would pick alike. Kernels without policy 3
        // (before 5.12) get policy 1.
        let custom = fs::write("/proc/sys/net/ipv4/fib_multipath_hash_fields", "0x0037")
            .and_then(|()| fs::write("/proc/sys/net/ipv4/fib_multipath_hash_policy", "3"));
        if custom.is_err() {
            fs::write("/proc/sys/net/ipv4/fib_multipath_hash_policy", "1")
                .map_err(|e| NetnsError::io("hash ECMP flows by ports", name, e))?;
        }
    }
    if options.multipath_hash_seed != 0 {
        match fs::write("/proc/sys/net/ipv4/fib_multipath_hash_seed", options.multipath_hash_seed.to_string()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(namespace = name, "this kernel has no fib_multipath_hash_seed")
            }
            other => other.map_err(|e| NetnsError::io("seed the ECMP hash", name, e))?,
        }
    }
    if options.skip_dead_links {
        for knob in ["all", "default"] {
            fs::write(format!("/proc/sys/net/ipv4/conf/{knob}/ignore_routes_with_linkdown"), "1")
                .map_err(|e| NetnsError::io("skip dead links", name, e))?;
        }
    }
    if options.announce {
        for knob in ["all", "default"] {
            fs::write(format!("/proc/sys/net/ipv4/conf/{knob}/arp_notify"), "1")
                .map_err(|e| NetnsError::io("announce addresses", name, e))?;
        }
    }
    Ok(())
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2); the fd is owned by the returned OwnedFd.
    let fd: RawFd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `work` on a namespace worker: long-lived OS threads that never
/// belong to the async runtime, go back to their own namespace after every
/// job (so they never keep a namespace alive), and save a thread spawn per
/// namespace. One per core: a process that hosts many EPMs' agents builds
/// their EVMs' namespaces side by side.
async fn on_worker<T, F>(work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetnsError> + Send + 'static,
{
    static WORKERS: OnceLock<Result<std::sync::mpsc::Sender<Job>, String>> = OnceLock::new();
    let workers = WORKERS
        .get_or_init(start_workers)
        .as_ref()
        .map_err(|e| NetnsError::io("start namespace worker", "-", io::Error::other(e.clone())))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(work());
    });
    workers.send(job).map_err(|_| NetnsError::io("namespace worker", "-", io::Error::other("worker stopped")))?;
    rx.await.map_err(|_| NetnsError::io("namespace worker", "-", io::Error::other("job panicked")))?
}

fn start_workers() -> Result<std::sync::mpsc::Sender<Job>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let jobs = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let count = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    for _ in 0..count {
        let home = File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
        let jobs = std::sync::Arc::clone(&jobs);
        std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for the next job.
                    let job = match jobs.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(_) => break,
                    };
                    let Ok(job) = job else { break };
                    job();
                    if enter(&home).is_err() {
                        // Cannot get home: stop taking jobs rather than run them in the wrong place.
                        break;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(tx)
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}
