//! Running an nftables script inside a network namespace, in this process:
//! libnftables (the library `nft` is a front end of, loaded at run time)
//! on a thread of its own that enters the namespace, so its netlink socket
//! is made there. No process is spawned: starting `nft` cost about 18 ms a
//! time, most of an EPM's share of a rule change; the library takes a few.
//! A script is one kernel transaction, as with `nft -f`.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::fd::OwnedFd;
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
/// libnftables keeps some state global (its initialisation, the symbol
/// tables it parses with): one script at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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

/// Runs `script` in the namespace `netns` (an open namespace file), as
/// `nft -f` would; the error is what nftables said.
pub fn run_in(netns: OwnedFd, script: &str) -> Result<(), String> {
    let library = LIBRARY_LOADED.get_or_init(load).as_ref().map_err(Clone::clone)?;
    let script = CString::new(script).map_err(|_| "the script holds a NUL byte".to_string())?;
    // A thread of its own: it enters the namespace and ends with the work,
    // so no other work ever runs in a namespace it did not ask for.
    // Named, so that a test can tell when a script is being run.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn_scoped(scope, move || {
                crate::netns::enter(&netns).map_err(|e| format!("entering the namespace: {e}"))?;
                let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
                run(library, &script)
            })
            .map_err(|e| format!("could not start the nftables thread: {e}"))?
            .join()
            .unwrap_or_else(|_| Err("the nftables thread panicked".into()))
    })
}

fn run(library: &Library, script: &CStr) -> Result<(), String> {
    // SAFETY: the library's documented sequence: a context (0:
    // NFT_CTX_DEFAULT), output and errors buffered rather than printed, the
    // script run, the error buffer read while the context lives, the
    // context freed; the script is NUL-terminated and outlives the call.
    unsafe {
        let context = (library.ctx_new)(0);
        if context.is_null() {
            return Err("nft_ctx_new failed".into());
        }
        (library.buffer_output)(context);
        (library.buffer_error)(context);
        let status = (library.run_cmd_from_buffer)(context, script.as_ptr());
        let result = match status {
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
        };
        (library.ctx_free)(context);
        result
    }
}
