//! TLS: PEM material and rustls configs, and the pure logic of the kTLS hand-off.
//!
//! The syscalls that hand keys to the kernel live in [`crate::sys::ktls`]; nothing here calls
//! the kernel.
pub mod check;
pub mod control;
pub mod material;
pub mod validity;

pub use crate::explain::explain;
