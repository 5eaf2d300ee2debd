//! What the kernel offers the engine, found the way [`Engine::start`](crate::Engine::start)
//! finds it: io_uring by setting up a ring, kernel TLS by installing dummy keys on a loopback
//! socket pair for each cipher, eBPF accounting by loading and attaching its program.

/// The kernel fast paths this machine offers, as [`probe`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelProbe {
    /// The kernel release (`/proc/sys/kernel/osrelease`), or `"unknown"`.
    pub kernel: String,
    /// A ring can be set up with the opcodes the io_uring driver needs: `driver = "auto"`
    /// picks io_uring, else epoll.
    pub io_uring: bool,
    /// Why io_uring is not usable, when it is not.
    pub io_uring_reason: Option<String>,
    /// The `tls` module accepts at least one cipher in both directions: `ktls = "auto"` hands
    /// sessions with those ciphers to the kernel.
    pub ktls: bool,
    /// The ciphers the kernel accepts (for TLS 1.2 and 1.3), by IANA-style name:
    /// `AES-128-GCM`, `AES-256-GCM`, `CHACHA20-POLY1305`.
    pub ktls_ciphers: Vec<&'static str>,
    /// Why kTLS (or some cipher) is not available; `None` when everything is.
    pub ktls_reason: Option<String>,
    /// The eBPF accounting program loads and attaches here: `ebpf = "auto"` counts bytes in
    /// the kernel too (docs/ebpf.md).
    pub ebpf: bool,
    /// Why eBPF accounting is not available, when it is not.
    pub ebpf_reason: Option<String>,
    /// Which library seals and opens TLS records in user space (where kTLS does not): `ring`
    /// on an x86-64 CPU with 256-bit VAES but no AVX-512, where its AES-GCM is the faster,
    /// else `aws-lc-rs`.
    pub record_cipher: &'static str,
}

/// Probes the kernel. It never fails: whatever is missing is reported in the result, with the
/// reason. It opens and closes a ring and a few loopback sockets, so it takes a few
/// milliseconds; call it once.
pub fn probe() -> KernelProbe {
    let uring = crate::driver::probe_uring();
    let ktls = crate::sys::ktls::probe();
    let ebpf = crate::accounting::probe();
    let ktls_ciphers = [
        (ktls.aes_128_gcm, "AES-128-GCM"),
        (ktls.aes_256_gcm, "AES-256-GCM"),
        (ktls.chacha20_poly1305, "CHACHA20-POLY1305"),
    ]
    .into_iter()
    .filter_map(|(ok, name)| ok.then_some(name))
    .collect();
    KernelProbe {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        io_uring: uring.is_ok(),
        io_uring_reason: uring.err(),
        ktls: ktls.available,
        ktls_ciphers,
        ktls_reason: ktls.reason,
        ebpf: ebpf.is_ok(),
        ebpf_reason: ebpf.err(),
        record_cipher: splice_proto::aead::Backend::fastest().name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever this machine has, the answer is consistent: a feature is either there or has a
    /// reason, and kTLS is there exactly when some cipher is.
    #[test]
    fn probe_is_consistent() {
        let p = probe();
        assert!(!p.kernel.is_empty());
        assert_eq!(p.io_uring, p.io_uring_reason.is_none(), "{p:?}");
        assert_eq!(p.ktls, !p.ktls_ciphers.is_empty(), "{p:?}");
        assert_eq!(p.ebpf, p.ebpf_reason.is_none(), "{p:?}");
        if !p.ktls {
            assert!(p.ktls_reason.is_some(), "{p:?}");
        }
        for c in &p.ktls_ciphers {
            assert!(
                ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"].contains(c),
                "{c}"
            );
        }
    }
}
