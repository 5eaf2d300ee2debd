//! The C boundary: the only module of the crate with `unsafe`. Every `extern "C"` function runs
//! its body through [`entry`] (no panic unwinds into C; the error goes to the thread's last
//! error) and reaches the caller's memory only through the helpers here, which check for NULL
//! and rely on the header's contract for the rest (a non-NULL pointer points at what its type
//! says, a string is NUL-terminated, a handle came from this library and is not yet freed).
#![allow(
    unsafe_code,
    reason = "the C boundary: raw pointers from C are read and written here"
)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{Failure, set_last_error, tunnel_result};

/// Runs `body`, catches a panic, records a failure as the thread's last error and returns the
/// code for C.
pub(crate) fn entry(call: &str, body: impl FnOnce() -> Result<(), Failure>) -> tunnel_result {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Failure::new(
            tunnel_result::TUNNEL_ERR_PANIC,
            format!("internal error (panic): {what}"),
        ))
    });
    match outcome {
        Ok(()) => tunnel_result::TUNNEL_OK,
        Err(f) => {
            let code = f.code;
            set_last_error(format!("{call}: {}", f.message));
            code
        }
    }
}

fn null(what: &str) -> Failure {
    Failure::new(
        tunnel_result::TUNNEL_ERR_NULL_ARGUMENT,
        format!("`{what}` is NULL"),
    )
}

/// The string `p` points at; an error naming `what` when `p` is NULL or not UTF-8.
pub(crate) fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: not NULL; the header requires a NUL-terminated string that stays valid for the
    // call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| {
        Failure::new(
            tunnel_result::TUNNEL_ERR_INVALID_ARGUMENT,
            format!("`{what}` is not UTF-8"),
        )
    })
}

/// The `len` strings of the array `p` points at; an error naming `what` when `p` is NULL,
/// `len` is 0, or one of them is NULL or not UTF-8.
pub(crate) fn str_list_arg<'a>(
    p: *const *const c_char,
    len: usize,
    what: &str,
) -> Result<Vec<&'a str>, Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    if len == 0 {
        return Err(Failure::new(
            tunnel_result::TUNNEL_ERR_INVALID_ARGUMENT,
            format!("`{what}` is empty (its length is 0)"),
        ));
    }
    // SAFETY: not NULL; the header requires an array of `len` pointers that stays valid for
    // the call.
    let items = unsafe { std::slice::from_raw_parts(p, len) };
    items
        .iter()
        .enumerate()
        .map(|(i, &item)| str_arg(item, &format!("{what}[{i}]")))
        .collect()
}

/// Like [`str_arg`], but NULL (and the empty string) is `None`.
pub(crate) fn opt_str_arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    str_arg(p, what).map(|s| (!s.is_empty()).then_some(s))
}

/// The value `p` points at (a handle or an options struct), borrowed for the call.
pub(crate) fn ref_arg<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the header requires a pointer this library returned (a handle not yet freed)
    // or a valid struct; `as_ref` checks for NULL.
    unsafe { p.as_ref() }.ok_or_else(|| null(what))
}

/// The handle `p` points at, mutably, for the call.
pub(crate) fn mut_arg<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: as in `ref_arg`; the header says these calls are not thread-safe on one handle.
    unsafe { p.as_mut() }.ok_or_else(|| null(what))
}

/// Writes `value` to the out-parameter `p`.
pub(crate) fn write_out<T>(p: *mut T, value: T, what: &str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: not NULL; the header requires it to point at writable memory for a `T`.
    unsafe { p.write(value) };
    Ok(())
}

/// Hands `value` to C as a new handle in `*p` (checked for NULL before anything is
/// allocated, so a NULL `p` leaks nothing).
pub(crate) fn put_box<T>(
    p: *mut *mut T,
    value: impl FnOnce() -> Result<T, Failure>,
    what: &str,
) -> Result<(), Failure> {
    if p.is_null() {
        return Err(null(what));
    }
    write_out(p, Box::into_raw(Box::new(value()?)), what)
}

/// Takes back the handle `*slot` (a `Box` this library gave out) and sets `*slot` to NULL, so a
/// second free of the same variable is a no-op. `None` when `slot` or `*slot` is NULL.
pub(crate) fn take_box<T>(slot: *mut *mut T) -> Option<Box<T>> {
    if slot.is_null() {
        return None;
    }
    // SAFETY: not NULL; the header requires it to point at the caller's handle variable.
    let p = unsafe { slot.replace(std::ptr::null_mut()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` came from `Box::into_raw` in this library (the header's contract) and the
    // variable holding it is now NULL, so the box is taken once.
    Some(unsafe { Box::from_raw(p) })
}

/// Takes back a slice this library gave out as `Box<[T]>` (pointer and length).
pub(crate) fn take_slice<T>(p: *mut T, len: usize) -> Option<Box<[T]>> {
    if p.is_null() {
        return None;
    }
    let slice = std::ptr::slice_from_raw_parts_mut(p, len);
    // SAFETY: the header requires the pointer and length a stats call returned, not yet freed.
    Some(unsafe { Box::from_raw(slice) })
}

/// Takes back a string this library gave out with `CString::into_raw`.
pub(crate) fn take_string(p: *mut c_char) -> Option<CString> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the header requires a string this library returned, not yet freed.
    Some(unsafe { CString::from_raw(p) })
}

/// The C log callback's type (`tunnel_log_callback` without its NULL).
pub(crate) type LogFn = unsafe extern "C" fn(u32, *const c_char, *const c_char, *mut c_void);

/// The C log callback and its user data, callable from any thread.
#[derive(Clone, Copy)]
pub(crate) struct LogSink {
    pub(crate) callback: LogFn,
    pub(crate) userdata: *mut c_void,
}

// SAFETY: the header requires the callback and its user data to be usable from any thread
// (logs come from the shard threads).
unsafe impl Send for LogSink {}
// SAFETY: as for Send: the library only passes `userdata` back to the callback.
unsafe impl Sync for LogSink {}

impl LogSink {
    pub(crate) fn call(&self, level: u32, target: &CStr, message: &CStr) {
        // SAFETY: a function pointer the program gave to tunnel_log_set_callback, with
        // NUL-terminated strings that live for the call, as the header documents.
        unsafe { (self.callback)(level, target.as_ptr(), message.as_ptr(), self.userdata) };
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn last_error() -> String {
        // SAFETY: tunnel_last_error returns this thread's NUL-terminated buffer.
        unsafe { CStr::from_ptr(crate::error::tunnel_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    /// A panic inside a call comes back as TUNNEL_ERR_PANIC with its message, not an unwind.
    #[test]
    fn a_panic_stops_at_the_boundary() {
        let code = entry("tunnel_test_call", || panic!("boom {}", 42));
        assert_eq!(code, tunnel_result::TUNNEL_ERR_PANIC);
        assert_eq!(
            last_error(),
            "tunnel_test_call: internal error (panic): boom 42"
        );
    }

    /// A message longer than the buffer is cut at a character boundary, and stays a C string.
    #[test]
    fn a_long_message_is_cut_whole() {
        let long = "é".repeat(2000);
        let code = entry("x", || {
            Err(Failure::new(tunnel_result::TUNNEL_ERR_OTHER, long.clone()))
        });
        assert_eq!(code, tunnel_result::TUNNEL_ERR_OTHER);
        let got = last_error();
        assert!(got.len() <= 1023 && got.len() > 1000, "{}", got.len());
        assert!(got.starts_with("x: éé"));
    }

    /// Freeing through the same variable twice: the first frees and sets NULL, the second is a
    /// no-op.
    #[test]
    fn take_box_clears_the_variable() {
        let mut handle = Box::into_raw(Box::new(7u64));
        assert_eq!(take_box(&mut handle).as_deref(), Some(&7));
        assert!(handle.is_null());
        assert!(take_box(&mut handle).is_none());
        assert!(take_box::<u64>(std::ptr::null_mut()).is_none());
    }
}
