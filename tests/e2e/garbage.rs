//! A peer that sends garbage instead of TLS to server mode loses only its own connection: it is
//! closed, a concurrent good connection keeps working, and the error is counted as `tls`.

use std::io::Write;

use crate::support::*;

/// Different kinds of not-TLS.
fn garbage_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut record_then_junk = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
    record_then_junk.extend(random_bytes(60, 90));
    vec![
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("random bytes", random_bytes(4096, 91)),
        // A TLS record header announcing a 65535-byte handshake record, then junk.
        ("oversized record", {
            let mut v = vec![0x16, 0x03, 0x01, 0xff, 0xff];
            v.extend(random_bytes(2000, 92));
            v
        }),
        ("handshake header then junk", record_then_junk),
        ("alert record type with junk", {
            let mut v = vec![0x15, 0x03, 0x03, 0x00, 0x02, 0xff, 0xff];
            v.extend(random_bytes(100, 93));
            v
        }),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
    ]
}

fn garbage_loses_only_its_own_connection(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
        .metrics(mp)
        .start();
    let name = format!("server-{}", localhost(sp));
    let labels = [
        ("forwarder", name.as_str()),
        ("mode", "server"),
        ("side", "tls"),
    ];
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);

    let mut good = tls_connect(localhost(sp), "localhost", cfg.clone());
    echo_roundtrip(&mut good, b"before the garbage");

    let inputs = garbage_inputs();
    let n = inputs.len();
    for (what, bytes) in inputs {
        let mut s = connect(localhost(sp));
        // The engine may close before reading it all: a write error is fine.
        let _ = s.write_all(&bytes);
        let (data, end) = read_until_end(&mut s);
        assert!(
            end.closed(),
            "{what}: the connection was not closed ({end:?})"
        );
        // At most a TLS alert comes back, never an echo of what we sent.
        assert!(
            data.len() < 64,
            "{what}: got {} bytes back from a garbage connection",
            data.len()
        );
        echo_roundtrip(&mut good, what.as_bytes());
    }

    let m = wait_metric(
        localhost(mp),
        "splice_connection_errors_total",
        &labels,
        |v| v >= n as f64,
    );
    assert!(
        m.has(
            "splice_connections_accepted_total",
            &[("forwarder", name.as_str()), ("mode", "server")]
        ),
        "the default forwarder name {name:?} is not in the metrics:\n{}",
        m.text
    );

    // The long-lived connection and a new one both still work.
    echo_roundtrip(&mut good, &random_bytes(1024 * 1024, 94));
    let mut fresh = tls_connect(localhost(sp), "localhost", cfg);
    echo_roundtrip(&mut fresh, b"after the garbage");
}

#[test]
fn garbage_loses_only_its_own_connection_uring() {
    garbage_loses_only_its_own_connection("uring");
}

#[test]
fn garbage_loses_only_its_own_connection_epoll() {
    garbage_loses_only_its_own_connection("epoll");
}

/// Garbage on many connections at once while a bulk transfer runs on a good one.
#[test]
fn concurrent_garbage_during_bulk_transfer() {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .metrics(mp)
        .start();
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    let good = tls_connect(localhost(sp), "localhost", cfg);

    let bulk = spawn("bulk", move || {
        let mut good = good;
        let data = random_bytes(8 * 1024 * 1024, 95);
        for chunk in data.chunks(256 * 1024) {
            try_echo_roundtrip(&mut good, chunk)?;
        }
        Ok::<_, std::io::Error>(())
    });
    let junk: Vec<_> = (0..40u64)
        .map(|i| {
            spawn("junk", move || {
                let mut s = connect(localhost(sp));
                let _ = s.write_all(&random_bytes(1000 + i as usize * 37, 200 + i));
                let (_, end) = read_until_end(&mut s);
                end.closed()
            })
        })
        .collect();
    let closed = junk
        .into_iter()
        .map(|h| h.join().expect("junk thread"))
        .filter(|c| *c)
        .count();
    assert_eq!(closed, 40, "every garbage connection must be closed");
    bulk.join()
        .expect("bulk thread")
        .expect("the bulk transfer survives the garbage");
    wait_metric(
        localhost(mp),
        "splice_connection_errors_total",
        &[("side", "tls")],
        |v| v >= 40.0,
    );
}
