//! Bad input: the process exits non-zero and prints exactly one stderr line starting with
//! `error: ` that names the file, key or address at fault (and does not panic).

use std::net::TcpListener;

use crate::support::*;

/// Runs `cmd`, which must fail; its one `error: ` line must contain every string in `all` and
/// at least one of `any` (when `any` is not empty).
fn expect_error(cmd: EngineCmd, all: &[&str], any: &[&str]) -> String {
    let (status, stderr) = cmd.run_to_exit();
    assert!(
        !status.success(),
        "{} exited successfully; stderr:\n{stderr}",
        cmd.describe()
    );
    assert!(
        !stderr.contains("panicked"),
        "{} panicked on bad input:\n{stderr}",
        cmd.describe()
    );
    let lines = error_lines(&stderr);
    assert_eq!(
        lines.len(),
        1,
        "{}: want exactly one line starting with \"error: \"; stderr:\n{stderr}",
        cmd.describe()
    );
    let line = lines[0];
    for needle in all {
        assert!(
            line.contains(needle),
            "{}: the error line does not name {needle:?}: {line}",
            cmd.describe()
        );
    }
    assert!(
        any.is_empty() || any.iter().any(|n| line.contains(n)),
        "{}: the error line names none of {any:?}: {line}",
        cmd.describe()
    );
    line.to_string()
}

fn server_with(cert: &str, key: &str) -> EngineCmd {
    EngineCmd::new("server")
        .opt("--listen", localhost(free_port()).to_string())
        .opt("--connect", "127.0.0.1:9")
        .opt("--cert", cert)
        .opt("--key", key)
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn missing_cert_file() {
    let pki = Pki::new();
    let missing = s(&pki.path().join("missing-cert.pem"));
    expect_error(server_with(&missing, &s(&pki.server.key)), &[&missing], &[]);
}

#[test]
fn missing_key_file() {
    let pki = Pki::new();
    let missing = s(&pki.path().join("missing-key.pem"));
    expect_error(
        server_with(&s(&pki.server.cert), &missing),
        &[&missing],
        &[],
    );
}

#[test]
fn directory_given_as_key() {
    let pki = Pki::new();
    let dir = pki.path().join("a-directory");
    std::fs::create_dir(&dir).expect("mkdir");
    let dir = s(&dir);
    expect_error(server_with(&s(&pki.server.cert), &dir), &[&dir], &[]);
}

#[test]
fn key_not_matching_cert() {
    let pki = Pki::new();
    let cert = s(&pki.server.cert);
    let key = s(&pki.other_server.key);
    expect_error(server_with(&cert, &key), &[], &[&cert, &key]);
}

#[test]
fn garbage_pem_cert() {
    let pki = Pki::new();
    let garbage = pki.path().join("garbage-cert.pem");
    write_file(&garbage, b"this is not a PEM file\n\x01\x02\x03 at all\n");
    let garbage = s(&garbage);
    expect_error(server_with(&garbage, &s(&pki.server.key)), &[&garbage], &[]);
}

#[test]
fn garbage_pem_key() {
    let pki = Pki::new();
    let garbage = pki.path().join("garbage-key.pem");
    write_file(
        &garbage,
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n",
    );
    let garbage = s(&garbage);
    expect_error(
        server_with(&s(&pki.server.cert), &garbage),
        &[&garbage],
        &[],
    );
}

#[test]
fn missing_ca_file() {
    let pki = Pki::new();
    let missing = s(&pki.path().join("missing-ca.pem"));
    let cmd = EngineCmd::new("client")
        .opt("--listen", localhost(free_port()).to_string())
        .opt("--connect", "127.0.0.1:9")
        .opt("--ca", &missing);
    expect_error(cmd, &[&missing], &[]);
}

#[test]
fn garbage_ca_file() {
    let pki = Pki::new();
    let garbage = pki.path().join("garbage-ca.pem");
    write_file(&garbage, b"no certificates in here\n");
    let garbage = s(&garbage);
    let cmd = EngineCmd::new("client")
        .opt("--listen", localhost(free_port()).to_string())
        .opt("--connect", "127.0.0.1:9")
        .opt("--ca", &garbage);
    expect_error(cmd, &[&garbage], &[]);
}

#[test]
fn missing_client_ca_file() {
    let pki = Pki::new();
    let missing = s(&pki.path().join("missing-client-ca.pem"));
    let cmd = server_with(&s(&pki.server.cert), &s(&pki.server.key)).opt("--client-ca", &missing);
    expect_error(cmd, &[&missing], &[]);
}

#[test]
fn bad_listen_address() {
    let pki = Pki::new();
    for bad in ["127.0.0.1:99999", "not-an-address"] {
        let cmd = EngineCmd::new("client")
            .opt("--listen", bad)
            .opt("--connect", "127.0.0.1:9")
            .opt("--ca", &pki.ca.path);
        expect_error(cmd, &[bad], &[]);
    }
}

#[test]
fn bad_connect_address() {
    let pki = Pki::new();
    for bad in ["no-port-here", "localhost:notaport", "127.0.0.1:70000"] {
        let cmd = EngineCmd::new("client")
            .opt("--listen", localhost(free_port()).to_string())
            .opt("--connect", bad)
            .opt("--ca", &pki.ca.path);
        expect_error(cmd, &[bad], &[]);
    }
}

#[test]
fn bad_metrics_address() {
    let pki = Pki::new();
    let cmd = EngineCmd::new("client")
        .opt("--listen", localhost(free_port()).to_string())
        .opt("--connect", "127.0.0.1:9")
        .opt("--ca", &pki.ca.path)
        .opt("--metrics", "metrics-nowhere");
    expect_error(cmd, &["metrics-nowhere"], &[]);
}

#[test]
fn unknown_config_key() {
    let pki = Pki::new();
    let path = pki.path().join("unknown-key.toml");
    let text = format!(
        "[[forwarder]]\nmode = \"client\"\nlisten = {}\nconnect = \"127.0.0.1:9\"\nca = {}\nbogus_setting = 1\n",
        q(localhost(free_port())),
        q(pki.ca.path.display())
    );
    write_file(&path, text.as_bytes());
    let cmd = EngineCmd::new("run").opt("--config", &path);
    expect_error(cmd, &["bogus_setting", "unknown-key.toml"], &[]);
}

#[test]
fn unknown_top_level_config_key() {
    let pki = Pki::new();
    let path = pki.path().join("unknown-top.toml");
    write_file(&path, b"threads = 1\nwhat_is_this = true\n");
    let cmd = EngineCmd::new("run").opt("--config", &path);
    expect_error(cmd, &["what_is_this", "unknown-top.toml"], &[]);
}

#[test]
fn missing_config_file() {
    let pki = Pki::new();
    let path = s(&pki.path().join("no-such-config.toml"));
    let cmd = EngineCmd::new("run").opt("--config", &path);
    expect_error(cmd, &["no-such-config.toml"], &[]);
}

/// A relative path in a config file is resolved against the file's directory, and a missing
/// one is named in the error.
#[test]
fn config_relative_missing_cert() {
    let pki = Pki::new();
    let path = pki.path().join("relative.toml");
    let text = format!(
        "[[forwarder]]\nmode = \"server\"\nlisten = {}\nconnect = \"127.0.0.1:9\"\ncert = \"not-there.crt\"\nkey = \"server.key\"\n",
        q(localhost(free_port()))
    );
    write_file(&path, text.as_bytes());
    let cmd = EngineCmd::new("run").opt("--config", &path).cwd("/");
    expect_error(cmd, &["not-there.crt"], &[]);
}

#[test]
fn listen_port_in_use() {
    let pki = Pki::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let cmd = EngineCmd::new("client")
        .opt("--listen", &addr)
        .opt("--connect", "127.0.0.1:9")
        .opt("--ca", &pki.ca.path);
    expect_error(cmd, &[&addr], &[]);
    drop(taken);
}

#[test]
fn listen_port_in_use_in_config() {
    let pki = Pki::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let path = pki.path().join("in-use.toml");
    let text = format!(
        "[[forwarder]]\nmode = \"server\"\nlisten = {}\nconnect = \"127.0.0.1:9\"\ncert = \"server.crt\"\nkey = \"server.key\"\n",
        q(&addr)
    );
    write_file(&path, text.as_bytes());
    expect_error(EngineCmd::new("run").opt("--config", &path), &[&addr], &[]);
    drop(taken);
}
