//! `splice-engine probe`: the library's [`KernelProbe`] for people (text) or programs (JSON).

use splice_engine::KernelProbe;

/// Prints `p` on stdout: one JSON object, or a few lines that say what `auto` would choose.
pub(crate) fn print(p: &KernelProbe, json: bool) {
    if json {
        let out = serde_json::json!({
            "kernel": p.kernel,
            "io_uring": p.io_uring,
            "io_uring_reason": p.io_uring_reason,
            "ktls": p.ktls,
            "ktls_ciphers": p.ktls_ciphers,
            "ktls_reason": p.ktls_reason,
            "ebpf": p.ebpf,
            "ebpf_reason": p.ebpf_reason,
            "record_cipher": p.record_cipher,
        });
        println!("{out}");
        return;
    }
    println!("kernel:   Linux {}", p.kernel);
    match &p.io_uring_reason {
        None if p.io_uring => println!("io_uring: yes (--driver auto uses io_uring)"),
        reason => println!(
            "io_uring: no, {} (--driver auto uses epoll)",
            reason.as_deref().unwrap_or("unknown reason")
        ),
    }
    if p.ktls {
        println!(
            "kTLS:     yes, {} (--ktls auto hands these sessions to the kernel)",
            p.ktls_ciphers.join(", ")
        );
    } else {
        println!("kTLS:     no (--ktls auto keeps TLS in user space)");
    }
    if let Some(r) = &p.ktls_reason {
        println!("          {r}");
    }
    match &p.ebpf_reason {
        None if p.ebpf => {
            println!("eBPF:     yes (--ebpf auto counts every socket's bytes in the kernel too)")
        }
        reason => println!(
            "eBPF:     no, {} (--ebpf auto counts in user space only)",
            reason.as_deref().unwrap_or("unknown reason")
        ),
    }
    println!(
        "TLS:      records sealed and opened in user space by {} (the faster AES-GCM on this CPU)",
        p.record_cipher
    );
}
