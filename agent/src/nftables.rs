//! Running an nftables script inside a network namespace, in this process:
//! libnftables (the library `nft` is a front end of, loaded at run time)
//! on a thread of its own that enters the namespace. A script is one kernel
//! transaction, as with `nft -f`.
//!
//! Measured here (a router namespace's table, 14 chains and 50 rules):
//! spawning `nft` about 18 ms a script; the library with a new context
//! 14 ms (a fresh context's first command that needs the kernel's ruleset
//! costs most of it); the same context again 1.6 ms. So each namespace
//! keeps its context: a context's netlink socket is made in the namespace
//! it was created in and stays there, and libnftables checks the kernel's
//! ruleset generation before every command, so a cached context sees
//! changes made by hand. A context is also a reference to its namespace,
//! which must not outlive the namespace's removal (its devices would live
//! on): [`forget`] drops it, and one whose namespace was made anew (another
//! inode) is replaced.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The name of the thread a script runs on (a thread's name holds 15 bytes).
pub const THREAD_NAME: &str = "merak-nftables";
/// The library's soname (Debian's libnftables1; the agent's image carries it).
const LIBRARY: &str = "libnftables.so.1";

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type RunFromBuffer = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type GetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;

/// The library's entry points this uses (libnftables(3)).
struct Library {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxBuffer,
    buffer_error: CtxBuffer,
    run_cmd_from_buffer: RunFromBuffer,
    get_error_buffer: GetBuffer,
}

/// Loaded once; the error says why it could not be.
static LIBRARY_LOADED: OnceLock<Result<Library, String>> = OnceLock::new();

/// A libnftables context (`struct nft_ctx *`), made in the namespace of
/// inode `inode`.
struct Context {
    handle: *mut c_void,
    inode: u64,
}

// SAFETY: a context is used by one thread at a time (under CONTEXTS' lock),
// and libnftables ties it to no thread.
unsafe impl Send for Context {}

/// Each namespace's context, by namespace name. The lock is also one
/// script at a time: libnftables keeps some state global.
static CONTEXTS: Mutex<Option<HashMap<String, Context>>> = Mutex::new(None);

/// Drops the context of the namespace `name`, before the namespace is
/// removed.
pub fn forget(name: &str) {
    forget_where(|namespace| namespace == name);
}

/// Drops the contexts of every namespace whose name starts with `prefix`
/// (an EPM's router namespaces, when its agent stops).
pub fn forget_prefix(prefix: &str) {
    forget_where(|namespace| namespace.starts_with(prefix));
}

fn forget_where(matches: impl Fn(&str) -> bool) {
    let mut contexts = CONTEXTS.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(map) = contexts.as_mut() else { return };
    let gone: Vec<String> = map.keys().filter(|name| matches(name)).cloned().collect();
    for name in gone {
        if let (Some(context), Some(Ok(library))) = (map.remove(&name), LIBRARY_LOADED.get()) {
            // SAFETY: a live context, freed once (it left the map).
            unsafe { (library.ctx_free)(context.handle) };
        }
    }
}

/// The inode of an open namespace file: which namespace it is.
fn inode_of(netns: &OwnedFd) -> Result<u64, String> {
    // SAFETY: fstat(2) on an open descriptor into a zeroed stat buffer.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(netns.as_raw_fd(), &mut stat) } != 0 {
        return Err(format!("the namespace file: {}", std::io::Error::last_os_error()));
    }
    Ok(stat.st_ino)
}

fn load() -> Result<Library, String> {
    let name = CString::new(LIBRARY).map_err(|e| e.to_string())?;
    // SAFETY: dlopen(3) with a NUL-terminated name; the handle is never
    // closed, so the symbols below stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("{LIBRARY} could not be loaded (install nftables: apt-get install nftables)"));
    }
    let symbol = |name: &str| -> Result<*mut c_void, String> {
        let c_name = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: dlsym(3) on a live handle with a NUL-terminated name.
        let address = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
        if address.is_null() { Err(format!("{LIBRARY} has no {name}")) } else { Ok(address) }
    };
    // SAFETY: each symbol is the libnftables function of that name, whose C
    // signature the type it is cast to spells out.
    unsafe {
        Ok(Library {
            ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(symbol("nft_ctx_new")?),
            ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(symbol("nft_ctx_free")?),
            buffer_output: std::mem::transmute::<*mut c_void, CtxBuffer>(symbol("nft_ctx_buffer_output")?),
            buffer_error: std::mem::transmute::<*mut c_void, CtxBuffer>(symbol("nft_ctx_buffer_error")?),
            run_cmd_from_buffer: std::mem::transmute::<*mut c_void, RunFromBuffer>(symbol("nft_run_cmd_from_buffer")?),
            get_error_buffer: std::mem::transmute::<*mut c_void, GetBuffer>(symbol("nft_ctx_get_error_buffer")?),
        })
    }
}

/// Runs `script` in the namespace `name`, open as `netns`, as `nft -f`
/// would; the error is what nftables said.
pub fn run_in(name: &str, netns: OwnedFd, script: &str) -> Result<(), String> {
    let library = LIBRARY_LOADED.get_or_init(load).as_ref().map_err(Clone::clone)?;
    let script = CString::new(script).map_err(|_| "the script holds a NUL byte".to_string())?;
    let inode = inode_of(&netns)?;
    // A thread of its own: it enters the namespace and ends with the work,
    // so no other work ever runs in a namespace it did not ask for.
    // Named, so that a test can tell when a script is being run.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn_scoped(scope, move || {
                crate::netns::enter(&netns).map_err(|e| format!("entering the namespace: {e}"))?;
                let mut contexts = CONTEXTS.lock().unwrap_or_else(PoisonError::into_inner);
                let contexts = contexts.get_or_insert_with(HashMap::new);
                if contexts.get(name).is_some_and(|c| c.inode != inode)
                    && let Some(stale) = contexts.remove(name)
                {
                    // SAFETY: a live context of a namespace made anew, freed once.
                    unsafe { (library.ctx_free)(stale.handle) };
                }
                let context = match contexts.get(name) {
                    Some(context) => context.handle,
                    None => {
                        let handle = new_context(library)?;
                        contexts.insert(name.to_string(), Context { handle, inode });
                        handle
                    }
                };
                run(library, context, &script)
            })
            .map_err(|e| format!("could not start the nftables thread: {e}"))?
            .join()
            .unwrap_or_else(|_| Err("the nftables thread panicked".into()))
    })
}

/// A context (0: NFT_CTX_DEFAULT) whose output and errors are buffered
/// rather than printed, made in this thread's namespace.
fn new_context(library: &Library) -> Result<*mut c_void, String> {
    // SAFETY: the library's documented calls on the context it returned.
    unsafe {
        let context = (library.ctx_new)(0);
        if context.is_null() {
            return Err("nft_ctx_new failed".into());
        }
        (library.buffer_output)(context);
        (library.buffer_error)(context);
        Ok(context)
    }
}

fn run(library: &Library, context: *mut c_void, script: &CStr) -> Result<(), String> {
    // SAFETY: a live context; the script is NUL-terminated and outlives the
    // call; the error buffer is read while the context lives.
    unsafe {
        let status = (library.run_cmd_from_buffer)(context, script.as_ptr());
        match status {
            0 => Ok(()),
            _ => {
                let error = (library.get_error_buffer)(context);
                let text = if error.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(error).to_string_lossy().trim().to_string()
                };
                Err(if text.is_empty() { format!("nftables failed ({status})") } else { text })
            }
        }
    }
}
