//! Result codes, the one mapping from [`splice_engine::Error`] to them, and the calling
//! thread's last error message.

use std::cell::RefCell;
use std::ffi::c_char;

use splice_engine::Error;

/// What a call did. `TUNNEL_OK` is 0; every other value is a failure, and
/// `tunnel_last_error()` on the same thread then says what failed, naming the file, key or
/// address. The numbers are part of the ABI: they never change, new ones are added at the end.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tunnel_result {
    /// Success.
    TUNNEL_OK = 0,
    /// A required pointer argument was NULL (the message names it).
    TUNNEL_ERR_NULL_ARGUMENT = 1,
    /// An argument is unusable: not UTF-8, an unknown mode, a zero count.
    TUNNEL_ERR_INVALID_ARGUMENT = 2,
    /// The configuration (TOML text or file, or forwarder options) is invalid; the message
    /// names the file (or `<string>`), the line and the key.
    TUNNEL_ERR_CONFIG = 3,
    /// A certificate, key or CA file is missing, unreadable or wrong; the message names it.
    TUNNEL_ERR_CERTIFICATE = 4,
    /// An address did not parse or did not resolve; the message names it.
    TUNNEL_ERR_ADDRESS = 5,
    /// A listener could not be opened (port in use, permission).
    TUNNEL_ERR_LISTEN = 6,
    /// No forwarder has the name given.
    TUNNEL_ERR_UNKNOWN_FORWARDER = 7,
    /// A forwarder of that name runs already.
    TUNNEL_ERR_FORWARDER_EXISTS = 8,
    /// The forwarder is not in client mode (`tunnel_connect` needs plain in, TLS out).
    TUNNEL_ERR_NOT_CLIENT_MODE = 9,
    /// The engine drains or was shut down: it takes no new connections or changes.
    TUNNEL_ERR_SHUT_DOWN = 10,
    /// A required kernel feature (io_uring, kTLS) is not available.
    TUNNEL_ERR_UNAVAILABLE = 11,
    /// A system call or other I/O failed.
    TUNNEL_ERR_IO = 12,
    /// rustls refused the TLS configuration.
    TUNNEL_ERR_TLS = 13,
    /// The forwarder has `max_connections` open; the connection was refused.
    TUNNEL_ERR_AT_CAPACITY = 14,
    /// The logger was already set (`tunnel_log_*` can be called once per process).
    TUNNEL_ERR_LOG_ALREADY_SET = 15,
    /// A bug in the library (a panic was caught at the boundary); please report it.
    TUNNEL_ERR_PANIC = 16,
    /// An engine error this version of the header has no code for.
    TUNNEL_ERR_OTHER = 17,
    /// A relay's tunnel API refused a call or did not answer; the message names the URL, the
    /// HTTP status and the API's message.
    TUNNEL_ERR_TUNNEL_API = 18,
}

/// A failed call: its code and message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: tunnel_result,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: tunnel_result, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        use tunnel_result::*;
        let code = match &e {
            Error::Config { .. } => TUNNEL_ERR_CONFIG,
            Error::Certificate { .. } => TUNNEL_ERR_CERTIFICATE,
            Error::Address { .. } => TUNNEL_ERR_ADDRESS,
            Error::Listen { .. } => TUNNEL_ERR_LISTEN,
            Error::UnknownForwarder { .. } => TUNNEL_ERR_UNKNOWN_FORWARDER,
            Error::ForwarderExists { .. } => TUNNEL_ERR_FORWARDER_EXISTS,
            Error::NotClientMode { .. } => TUNNEL_ERR_NOT_CLIENT_MODE,
            Error::Draining => TUNNEL_ERR_SHUT_DOWN,
            Error::Unavailable { .. } => TUNNEL_ERR_UNAVAILABLE,
            Error::Syscall(_) | Error::Io { .. } => TUNNEL_ERR_IO,
            Error::Tls(_) | Error::KtlsRecord(_) => TUNNEL_ERR_TLS,
            Error::AtCapacity { .. } => TUNNEL_ERR_AT_CAPACITY,
            Error::TunnelApi { .. } => TUNNEL_ERR_TUNNEL_API,
            _ => TUNNEL_ERR_OTHER,
        };
        Failure::new(code, e.to_string())
    }
}

/// The longest last-error message kept (bytes, with its NUL); longer ones are cut at a
/// character boundary.
const LAST_ERROR_MAX: usize = 1024;

thread_local! {
    // A fixed buffer rather than a heap string: a thread's heap-held message would outlive
    // what leak checkers can see (dynamic TLS of a shared library) and read as a leak.
    static LAST_ERROR: RefCell<[u8; LAST_ERROR_MAX]> = const { RefCell::new([0; LAST_ERROR_MAX]) };
}

pub(crate) fn set_last_error(message: String) {
    let message = message.replace('\0', " ");
    let mut end = message.len().min(LAST_ERROR_MAX - 1);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    LAST_ERROR.with(|l| {
        let mut buf = l.borrow_mut();
        buf[..end].copy_from_slice(&message.as_bytes()[..end]);
        buf[end] = 0;
    });
}

/// The message of the last failed call on the calling thread (`""` when none failed yet; at
/// most 1023 bytes).
///
/// The string belongs to the library and stays valid until the next failing call on this
/// thread (or the thread's end); copy it to keep it. A successful call does not clear it. Thread-safe (each thread
/// has its own).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.as_ptr().cast::<c_char>().cast_const())
}

/// The name of a result code as a static string (`"TUNNEL_ERR_CONFIG"`), or
/// `"TUNNEL_ERR_UNKNOWN_CODE"`. Thread-safe; never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_result_name(code: u32) -> *const c_char {
    let name: &'static std::ffi::CStr = match code {
        0 => c"TUNNEL_OK",
        1 => c"TUNNEL_ERR_NULL_ARGUMENT",
        2 => c"TUNNEL_ERR_INVALID_ARGUMENT",
        3 => c"TUNNEL_ERR_CONFIG",
        4 => c"TUNNEL_ERR_CERTIFICATE",
        5 => c"TUNNEL_ERR_ADDRESS",
        6 => c"TUNNEL_ERR_LISTEN",
        7 => c"TUNNEL_ERR_UNKNOWN_FORWARDER",
        8 => c"TUNNEL_ERR_FORWARDER_EXISTS",
        9 => c"TUNNEL_ERR_NOT_CLIENT_MODE",
        10 => c"TUNNEL_ERR_SHUT_DOWN",
        11 => c"TUNNEL_ERR_UNAVAILABLE",
        12 => c"TUNNEL_ERR_IO",
        13 => c"TUNNEL_ERR_TLS",
        14 => c"TUNNEL_ERR_AT_CAPACITY",
        15 => c"TUNNEL_ERR_LOG_ALREADY_SET",
        16 => c"TUNNEL_ERR_PANIC",
        17 => c"TUNNEL_ERR_OTHER",
        18 => c"TUNNEL_ERR_TUNNEL_API",
        _ => c"TUNNEL_ERR_UNKNOWN_CODE",
    };
    name.as_ptr()
}
