//! Entering a network namespace in a child process, as `ip netns exec`
//! does: the namespace itself, and a mount namespace of the child's own
//! whose `/sys` shows that namespace's devices (tools read their interfaces
//! there). Used for the processes an agent supervises and for `merak exec`.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// The PATH a command run in a namespace gets (its environment is cleared).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the child needs to enter a namespace, prepared before the fork (the
/// child may not allocate).
pub struct NamespaceEntry {
    netns: OwnedFd,
    root: CString,
    sys: CString,
    sysfs: CString,
}

impl NamespaceEntry {
    pub fn prepare(netns: &Path) -> std::io::Result<NamespaceEntry> {
        let c = |s: &str| CString::new(s).map_err(std::io::Error::other);
        Ok(NamespaceEntry { netns: File::open(netns)?.into(), root: c("/")?, sys: c("/sys")?, sysfs: c("sysfs")? })
    }

    /// In the child, before exec: the network namespace, and a mount
    /// namespace whose /sys shows that network namespace's devices.
    pub fn enter(&self) -> std::io::Result<()> {
        let fail = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
        // SAFETY: plain syscalls on valid descriptors and NUL-terminated
        // strings prepared before the fork; nothing here allocates.
        unsafe {
            fail(libc::setns(self.netns.as_raw_fd(), libc::CLONE_NEWNET))?;
            fail(libc::unshare(libc::CLONE_NEWNS))?;
            fail(libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            ))?;
            // Not mounted at all is fine: the mount below is what matters.
            libc::umount2(self.sys.as_ptr(), libc::MNT_DETACH);
            fail(libc::mount(self.sysfs.as_ptr(), self.sys.as_ptr(), self.sysfs.as_ptr(), 0, std::ptr::null()))
        }
    }
}

/// Sends `signal` to the process group a child leads (started with
/// `setpgid(0, 0)`), so that what it started goes with it.
pub fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()).filter(|p| *p > 1) {
        // SAFETY: kill(2) on the process group the child leads; an already
        // empty group is ESRCH, which is fine.
        unsafe { libc::kill(-pid, signal) };
    }
}
