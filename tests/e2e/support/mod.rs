//! Shared helpers for the end-to-end tests, by topic: the engine process and its command line
//! (`engine`), its log (`logs`), a chain of two engines (`chain`), rustls peers (`tls`),
//! `openssl` children (`openssl`), backends (`backends`), payloads and hashes (`payload`),
//! metrics scraping (`metrics`), sockets (`net`) and a relay of ours with
//! its agents (`tunnel`); certificates come from `splice-test-pki`.
//! Everything is re-exported here, so a test file needs only `use crate::support::*`.
//!
//! Everything panics with context on failure: these are test helpers.
#![allow(
    dead_code,
    reason = "each test file uses a different subset of the helpers"
)]

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

mod backends;
mod chain;
mod engine;
mod logs;
mod metrics;
mod net;
mod openssl;
mod payload;
mod tls;
mod tunnel;
mod ws_relay;

pub use backends::*;
pub use chain::*;
pub use engine::*;
pub use logs::*;
pub use metrics::*;
pub use net::*;
pub use openssl::*;
pub use payload::*;
pub use tls::*;
pub use tunnel::*;
pub use ws_relay::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_splice-engine");
/// The independent TLS peer.
pub const OPENSSL: &str = "/usr/bin/openssl";
/// Read/write timeout on test sockets: only there to turn a hang into a failure.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an engine gets to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A generous bound for "this should happen soon" (a close, a reload, an exit).
pub const SOON: Duration = Duration::from_secs(30);

/// The drivers the data tests run on.
pub const DRIVERS: [&str; 2] = ["uring", "epoll"];

// The test PKI (CAs, server and client leaves as files, in every key type) is the workspace's
// one generator, `splice-test-pki`.
pub use splice_test_pki::{Ca, KeyType, Leaf, Pki, Usage};

/// Writes `data` to `path` (replacing it atomically through a rename).
pub fn write_file(path: &Path, data: &[u8]) {
    let tmp = path.with_extension(format!(
        "tmp{}",
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

static TMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Polls `cond` every 20 ms for up to `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` on a named thread and returns its handle.
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .expect("spawn a test thread")
}
