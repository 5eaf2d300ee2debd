//! Kernel-feature tests for splice-engine.
//!
//! The tests are in `tests/ktls.rs`. They need a kernel with kTLS, so they are built as a static
//! binary and run inside the kTLS VM by `cargo xtask integration-test vm`; they fail on purpose
//! anywhere else. This library is empty.
