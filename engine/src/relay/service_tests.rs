//! The relay service: its state file, its API token file, its events, a restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Instant;

use super::*;
use crate::relay::registry::RotateSides;
use crate::relay::sqlite::tests::tempdir;
use crate::relay::tunnel::{Peer, Side, Tunnel, TunnelStatus};
use splice_test_pki::Pki;

/// Errors as the engine makes them for a relay of the file `origin` (without the line).
fn at(origin: &str) -> impl Fn(&'static str, String) -> Error + '_ {
    move |_, message| Error::config(origin, format!("relay: {message}"))
}

/// A relay on ports 0 with `pki`'s server certificate and its registry at `state`.
fn config(pki: &Pki, state: &str) -> RelayConfig {
    RelayConfig::new(
        "127.0.0.1:0",
        &pki.server.cert,
        &pki.server.key,
        "127.0.0.1:0",
    )
    .state(state)
}

/// Sends one request to the API and returns the status and the body as JSON.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let (head, text) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .expect("status")
        .parse()
        .expect("u16");
    (status, serde_json::from_str(text).expect("JSON"))
}

/// Collects the events of `service`.
fn record(service: &RelayService) -> Arc<Mutex<Vec<RelayEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    service.set_events(Box::new(move |e| sink.lock().expect("lock").push(e)));
    seen
}

/// Waits (up to 30 s) until `seen` holds `want`.
fn wait_for(seen: &Mutex<Vec<RelayEvent>>, want: &RelayEvent) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.lock().expect("lock").contains(want) {
        assert!(Instant::now() < deadline, "no {want:?} in {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_state_file_and_its_directory_are_created() {
    let pki = Pki::new();
    let dir = tempdir();
    let path = dir.join("deeper/state/relay.sqlite");
    let service = RelayService::start(&config(&pki, &path.display().to_string()), &at("test"))
        .expect("start");
    assert!(path.is_file(), "{}", path.display());
    assert_ne!(service.api_addr().port(), 0);
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_default_state_file_is_named_after_the_relay() {
    let cfg = RelayConfig::new("127.0.0.1:4443", "c", "k", "127.0.0.1:0").name("edge/1");
    if let Some(p) = state_path(&cfg, &relay_name(&cfg)) {
        assert!(
            p.ends_with("splice-engine/relay-edge_1.sqlite"),
            "{}",
            p.display()
        );
    }
    let unnamed = RelayConfig::new("127.0.0.1:4443", "c", "k", "127.0.0.1:0");
    assert_eq!(relay_name(&unnamed), "relay-127.0.0.1:4443");
    if let Some(p) = state_path(&unnamed, &relay_name(&unnamed)) {
        assert!(
            p.ends_with("splice-engine/relay-127.0.0.1_4443.sqlite"),
            "{}",
            p.display()
        );
    }
    let given = unnamed.state(":memory:");
    assert_eq!(state_path(&given, "x"), Some(PathBuf::from(":memory:")));
}

#[test]
fn a_memory_relay_serves_the_api() {
    let pki = Pki::new();
    let service = RelayService::start(&config(&pki, ":memory:"), &at("test")).expect("start");
    let (status, opened) = call(service.api_addr(), "POST", "/tunnels", "", None);
    assert_eq!(status, 200, "{opened}");
    let id = opened["tunnelId"].as_str().expect("tunnelId");
    let token = opened["sourceAccessToken"].as_str().expect("token");
    let a = service
        .registry()
        .admit(token, Side::Source, None, Timestamp::now())
        .expect("admitted");
    assert_eq!(a.tunnel_id, id);
}

#[test]
fn the_api_token_file_is_read_and_enforced() {
    let pki = Pki::new();
    let dir = tempdir();
    let file = dir.join("api-token");
    std::fs::write(&file, "  s3cret-api-token\n").expect("write");
    let service = RelayService::start(&config(&pki, ":memory:").api_token_file(&file), &at("test"))
        .expect("start");
    let addr = service.api_addr();
    let (status, body) = call(addr, "GET", "/tunnels", "", None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(addr, "GET", "/tunnels", "", Some("wrong"));
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(addr, "GET", "/tunnels", "", Some("s3cret-api-token"));
    assert_eq!(status, 200, "{body}");
    drop(service);

    // Empty, or missing: an error that names the file.
    let empty = dir.join("empty-token");
    std::fs::write(&empty, " \n").expect("write");
    for f in [&empty, &dir.join("missing-token")] {
        let e = RelayService::start(&config(&pki, ":memory:").api_token_file(f), &at("test"))
            .expect_err("no token");
        assert!(e.to_string().contains(&*f.display().to_string()), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_fields_are_errors_naming_the_key() {
    let pki = Pki::new();
    let mut cfg = config(&pki, ":memory:");
    cfg.api = "localhost".into();
    let e = RelayService::start(&cfg, &at("relay.toml")).expect_err("bad api");
    assert!(e.to_string().contains("relay.toml"), "{e}");
    assert!(e.to_string().contains("`api`"), "{e}");

    let dir = tempdir();
    let junk = dir.join("junk.sqlite");
    std::fs::write(&junk, vec![b'x'; 4096]).expect("write");
    let e = RelayService::start(
        &config(&pki, &junk.display().to_string()),
        &at("relay.toml"),
    )
    .expect_err("not SQLite");
    assert!(e.to_string().contains("`state`"), "{e}");
    assert!(e.to_string().contains("junk.sqlite"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn api_close_and_rotate_fire_events() {
    let pki = Pki::new();
    let service = RelayService::start(&config(&pki, ":memory:"), &at("test")).expect("start");
    let seen = record(&service);
    let addr = service.api_addr();
    let (_, opened) = call(addr, "POST", "/tunnels", "", None);
    let id = opened["tunnelId"].as_str().expect("id").to_string();

    let (status, body) = call(
        addr,
        "POST",
        &format!("/tunnels/{id}/rotate"),
        r#"{"clientMode": "DESTINATION"}"#,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(addr, "POST", &format!("/tunnels/{id}/close"), "", None);
    assert_eq!(status, 200, "{body}");
    // A refused call fires nothing.
    let (status, _) = call(addr, "POST", "/tunnels/nope/close", "", None);
    assert_eq!(status, 404);
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![
            RelayEvent::Rotated {
                tunnel_id: id.clone(),
                sides: RotateSides::Destination
            },
            RelayEvent::Closed {
                tunnel_id: id,
                expired: false
            },
        ]
    );
}

/// A tunnel whose one-minute lifetime ended a minute ago, written straight into the state
/// file beside the running relay (as another process sharing the file would).
fn expired_tunnel(id: &str) -> Tunnel {
    let then = Timestamp(Timestamp::now().0 - 120_000);
    Tunnel {
        id: id.into(),
        description: None,
        thing_name: None,
        services: vec![],
        lifetime_seconds: 60,
        pairing: Default::default(),
        status: TunnelStatus::Open,
        created_at: then,
        last_updated_at: then,
        source: Peer::new(
            super::super::secret::TokenHash::of(&format!("{id}-s")),
            None,
            then,
        ),
        destination: Peer::new(
            super::super::secret::TokenHash::of(&format!("{id}-d")),
            None,
            then,
        ),
    }
}

#[test]
fn expiry_fires_an_event() {
    let pki = Pki::new();
    let dir = tempdir();
    let path = dir.join("relay.sqlite");
    let service = RelayService::start(&config(&pki, &path.display().to_string()), &at("test"))
        .expect("start");
    let seen = record(&service);
    // The registry's memory is the truth while the relay runs (the file is written behind
    // it), so the tunnel comes through the registry, with a lifetime of a second.
    let opened = service
        .registry()
        .open(
            super::super::registry::OpenRequest {
                lifetime_seconds: Some(1),
                ..Default::default()
            },
            Timestamp::now(),
        )
        .expect("open");
    wait_for(
        &seen,
        &RelayEvent::Closed {
            tunnel_id: opened.tunnel_id.clone(),
            expired: true,
        },
    );
    let t = service
        .registry()
        .describe(&opened.tunnel_id, Timestamp::now())
        .expect("still listed");
    assert_eq!(t.status, TunnelStatus::Closed);

    drop(service);
    // And the file has it closed once the relay is gone.
    let on_disk = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        on_disk
            .get(&opened.tunnel_id)
            .expect("get")
            .expect("there")
            .status,
        TunnelStatus::Closed
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_api_call_that_finds_a_tunnel_expired_announces_it() {
    // No timer here: only the API can see the tunnel expire.
    let mut store = MemoryStore::default();
    store.put(&expired_tunnel("listed-tunnel")).expect("put");
    store.put(&expired_tunnel("described-tunnel")).expect("put");
    let registry = Arc::new(Registry::new(Box::new(store), Limits::default()));
    let events = Arc::new(Events::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    events.set(Box::new(move |e| sink.lock().expect("lock").push(e)));
    let api =
        ApiServer::start_with_events(([127, 0, 0, 1], 0).into(), registry.clone(), None, events)
            .expect("start");
    let (status, body) = call(
        api.local_addr(),
        "GET",
        "/tunnels/described-tunnel",
        "",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(body["tunnel"]["status"], "CLOSED");
    let mut got = seen.lock().expect("lock").clone();
    got.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    assert_eq!(
        got,
        ["described-tunnel", "listed-tunnel"].map(|id| RelayEvent::Closed {
            tunnel_id: id.into(),
            expired: true
        })
    );
}

#[test]
fn a_restart_keeps_the_tunnels_and_their_tokens() {
    let pki = Pki::new();
    let dir = tempdir();
    let path = dir.join("relay.sqlite");
    let cfg = config(&pki, &path.display().to_string());
    let service = RelayService::start(&cfg, &at("test")).expect("start");
    let (_, opened) = call(
        service.api_addr(),
        "POST",
        "/tunnels",
        r#"{"destinationConfig": {"services": ["SSH"]}}"#,
        None,
    );
    let id = opened["tunnelId"].as_str().expect("id").to_string();
    let source = opened["sourceAccessToken"].as_str().expect("token");
    let destination = opened["destinationAccessToken"].as_str().expect("token");
    let client = "a-client-token-of-at-least-32-characters";
    service
        .registry()
        .admit(source, Side::Source, Some(client), Timestamp::now())
        .expect("admitted");
    drop(service);

    // Only hashes on disk.
    let bytes = std::fs::read(&path).expect("read");
    let on_disk = String::from_utf8_lossy(&bytes);
    assert!(!on_disk.contains(source) && !on_disk.contains(destination));

    let service = RelayService::start(&cfg, &at("test")).expect("restart");
    let registry = service.registry();
    let t = registry.describe(&id, Timestamp::now()).expect("kept");
    assert_eq!(t.services, vec!["SSH".to_string()]);
    assert!(!t.source.connected, "the peer of the previous run is gone");
    // The destination's unused token still works; the source reconnects with its client
    // token, and without it is refused.
    registry
        .admit(destination, Side::Destination, None, Timestamp::now())
        .expect("destination token kept");
    assert!(
        registry
            .admit(source, Side::Source, None, Timestamp::now())
            .is_err()
    );
    let again = registry
        .admit(source, Side::Source, Some(client), Timestamp::now())
        .expect("reconnect with the client token");
    assert!(again.reconnect);
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tunnel opened for a thing tells the data plane, with the destination token the answer
/// carries (the thing's standby agents get it); one opened without a thing does not.
#[test]
fn an_open_for_a_thing_fires_a_notice_with_the_destination_token() {
    let pki = Pki::new();
    let service = RelayService::start(&config(&pki, ":memory:"), &at("test")).expect("start");
    let seen = record(&service);
    let body = r#"{"destinationConfig": {"thingName": "pump-7", "services": ["ssh", "web"]}}"#;
    let (status, opened) = call(service.api_addr(), "POST", "/tunnels", body, None);
    assert_eq!(status, 200, "{opened}");
    let (status, _) = call(service.api_addr(), "POST", "/tunnels", "", None);
    assert_eq!(status, 200);
    let events = seen.lock().expect("lock").clone();
    let [RelayEvent::Notify { thing, notice }] = &events[..] else {
        panic!("one notice: {events:?}")
    };
    assert_eq!(thing, "pump-7");
    assert_eq!(notice.tunnel_id, opened["tunnelId"].as_str().unwrap());
    assert_eq!(
        notice.client_access_token,
        opened["destinationAccessToken"].as_str().unwrap()
    );
    assert_eq!(notice.client_mode, "destination");
    assert_eq!(notice.services, ["ssh", "web"]);
    assert!(!format!("{events:?}").contains(&notice.client_access_token));
}

/// `check` reads the relay's client CAs and CRLs (and `Engine::check_file` the agents'
/// identities): a bad file is an error that names it and its key.
#[test]
fn check_reads_client_cas_crls_and_identities() {
    use crate::config::{EngineConfig, SourceConfig};
    let pki = splice_test_pki::Pki::new();
    let relay = RelayConfig::new(
        "127.0.0.1:0",
        &pki.server.cert,
        &pki.server.key,
        "127.0.0.1:0",
    )
    .client_ca(&pki.ca.path);
    let ok = EngineConfig::new().relay(relay.clone()).source(
        SourceConfig::new("127.0.0.1:1")
            .service("a", "127.0.0.1:0")
            .identity(&pki.client.cert, &pki.client.key),
    );
    check_files(&ok).expect("good files");
    crate::shard::tunnel::agent::check_all(&ok).expect("a good identity");
    let bad_crl = EngineConfig::new().relay(relay.client_crl(&pki.client.cert));
    let e = check_files(&bad_crl).unwrap_err().to_string();
    assert!(
        e.contains("client.crt") && e.contains("revocation list") && e.contains("`client_crls`"),
        "{e}"
    );
    let bad_key = EngineConfig::new().source(
        SourceConfig::new("127.0.0.1:1")
            .service("a", "127.0.0.1:0")
            .identity(&pki.client.cert, &pki.other_client.key),
    );
    let e = crate::shard::tunnel::agent::check_all(&bad_key)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("other-client.key")
            && e.contains("does not match")
            && e.contains("`identity_key`"),
        "{e}"
    );
}
