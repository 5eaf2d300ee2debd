//! The registry's rules, run on both stores; persistence across a reopen of the SQLite file.

use std::path::Path;

use super::*;
use crate::relay::sqlite::SqliteStore;
use crate::relay::store::MemoryStore;

const T0: Timestamp = Timestamp(1_800_000_000_000);
const CLIENT_A: &str = "0123456789abcdef-0123456789abcdef";
const CLIENT_B: &str = "fedcba9876543210-fedcba9876543210";

fn secs(s: u64) -> Timestamp {
    Timestamp(T0.0 + s * 1000)
}

/// A registry on each store, with AWS's limits.
fn registries() -> Vec<(&'static str, Registry)> {
    vec![
        (
            "memory",
            Registry::new(Box::new(MemoryStore::default()), Limits::default()),
        ),
        (
            "sqlite",
            Registry::new(
                Box::new(SqliteStore::open(Path::new(":memory:")).expect("sqlite")),
                Limits::default(),
            ),
        ),
        (
            "sqlite written behind",
            Registry::new(
                Box::new(
                    crate::relay::writer::WriteBehind::new(Box::new(
                        SqliteStore::open(Path::new(":memory:")).expect("sqlite"),
                    ))
                    .expect("write-behind"),
                ),
                Limits::default(),
            ),
        ),
    ]
}

fn ssh() -> OpenRequest {
    OpenRequest {
        thing_name: Some("pump-7".into()),
        services: vec!["SSH".into(), "HTTP".into()],
        ..OpenRequest::default()
    }
}

#[test]
fn open_gives_two_distinct_tokens_and_an_open_tunnel() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        assert_ne!(o.source_token, o.destination_token, "{store}");
        let t = r.describe(&o.tunnel_id, secs(1)).expect("describe");
        assert_eq!(t.status, TunnelStatus::Open, "{store}");
        assert_eq!(t.services, ["SSH", "HTTP"], "{store}");
        assert_eq!(t.thing_name.as_deref(), Some("pump-7"), "{store}");
        assert_eq!(t.lifetime_seconds, 720 * 60, "{store}: AWS's default");
        assert_eq!(t.created_at, T0, "{store}");
        assert!(!t.source.connected && !t.destination.connected, "{store}");
        // Only the hashes are kept.
        assert_eq!(t.source.token, o.source_token.hash(), "{store}");
        assert_eq!(t.destination.token, o.destination_token.hash(), "{store}");
        let list = r.list(None, secs(1)).expect("list");
        assert_eq!(list.len(), 1, "{store}");
        assert!(r.list(Some("other"), secs(1)).expect("list").is_empty());
        assert_eq!(r.list(Some("pump-7"), secs(1)).expect("list").len(), 1);
    }
}

#[test]
fn a_service_the_tunnel_lacks_is_refused_before_the_token_is_used() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        let tok = o.source_token.expose();
        let named = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let typo = r.admit_naming(tok, Side::Source, None, &named(&["SSH", "HTPP"]), secs(1));
        let Err(refusal) = typo else {
            panic!("{store}: admitted with a service the tunnel lacks");
        };
        assert_eq!(refusal.status(), 400, "{store}");
        let text = refusal.to_string();
        assert!(
            text.contains(r#"no service ["HTPP"] (its services: ["SSH", "HTTP"])"#),
            "{store}: {text}"
        );
        let t = r.describe(&o.tunnel_id, secs(1)).expect("describe");
        assert!(!t.source.connected, "{store}");
        // The token is still unused: a subset of the tunnel's services takes it.
        r.admit_naming(tok, Side::Source, None, &named(&["HTTP"]), secs(2))
            .expect("a subset, first use");
        let again = r.admit_naming(tok, Side::Source, None, &named(&["HTTP"]), secs(3));
        assert_eq!(again, Err(Refusal::TokenUsed), "{store}");
    }
}

#[test]
fn a_token_without_client_token_is_single_use() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        let tok = o.source_token.expose();
        let a = r
            .admit(tok, Side::Source, None, secs(1))
            .expect("first use");
        assert_eq!(a.side, Side::Source, "{store}");
        assert_eq!(a.services, ["SSH", "HTTP"], "{store}");
        assert!(!a.reconnect, "{store}");
        assert_eq!(a.expires_at, T0.plus_seconds(720 * 60), "{store}");
        let t = r.describe(&o.tunnel_id, secs(1)).expect("describe");
        assert!(t.source.connected && !t.destination.connected, "{store}");

        let again = r.admit(tok, Side::Source, None, secs(2));
        assert_eq!(again, Err(Refusal::TokenUsed), "{store}");
        assert_eq!(Refusal::TokenUsed.status(), 403);
        // A client token brought only now does not help.
        let late = r.admit(tok, Side::Source, Some(CLIENT_A), secs(2));
        assert_eq!(late, Err(Refusal::TokenUsed), "{store}");
    }
}

#[test]
fn a_client_token_lets_only_itself_reconnect() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        let tok = o.destination_token.expose();
        let first = r.admit(tok, Side::Destination, Some(CLIENT_A), secs(1));
        assert!(!first.expect("first").reconnect, "{store}");
        let again = r
            .admit(tok, Side::Destination, Some(CLIENT_A), secs(2))
            .expect("reconnect with the same client token");
        assert!(again.reconnect, "{store}");
        for other in [Some(CLIENT_B), None] {
            let refused = r.admit(tok, Side::Destination, other, secs(3));
            assert_eq!(refused, Err(Refusal::ClientTokenMismatch), "{store}");
        }
        assert_eq!(Refusal::ClientTokenMismatch.status(), 403);
    }
}

#[test]
fn refusals_and_their_statuses() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        let wrong_mode = r.admit(o.source_token.expose(), Side::Destination, None, secs(1));
        assert_eq!(
            wrong_mode,
            Err(Refusal::WrongMode {
                token: "source",
                asked: "destination"
            }),
            "{store}"
        );
        // A refused attempt does not use the token up.
        r.admit(o.source_token.expose(), Side::Source, None, secs(1))
            .expect("right mode");
        let unknown = r.admit("not-a-token", Side::Source, None, secs(1));
        assert_eq!(unknown, Err(Refusal::UnknownToken), "{store}");
        for bad in [
            "short",
            &"x".repeat(129),
            "0123456789abcdef_0123456789abcdef",
        ] {
            let e = r.admit(
                o.destination_token.expose(),
                Side::Destination,
                Some(bad),
                secs(1),
            );
            assert_eq!(e, Err(Refusal::BadClientToken), "{store}: {bad:?}");
        }
        let statuses = [
            Refusal::BadClientToken.status(),
            Refusal::UnknownToken.status(),
            Refusal::WrongMode {
                token: "source",
                asked: "destination",
            }
            .status(),
            Refusal::TunnelClosed("x".into()).status(),
            Refusal::Unavailable("x".into()).status(),
        ];
        assert_eq!(statuses, [400, 403, 403, 410, 503]);
    }
}

#[test]
fn rotate_invalidates_the_old_token() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        let rot = r
            .rotate(&o.tunnel_id, RotateSides::Source, None, secs(5))
            .expect("rotate");
        assert!(rot.destination_token.is_none(), "{store}");
        let new = rot.source_token.expect("a new source token");
        assert_ne!(new, o.source_token);
        let old = r.admit(o.source_token.expose(), Side::Source, None, secs(6));
        assert_eq!(old, Err(Refusal::UnknownToken), "{store}");
        r.admit(new.expose(), Side::Source, None, secs(6))
            .expect("the new token");
        // The destination's token was not rotated.
        r.admit(
            o.destination_token.expose(),
            Side::Destination,
            None,
            secs(6),
        )
        .expect("destination unchanged");
        assert_eq!(
            r.describe(&o.tunnel_id, secs(7))
                .expect("describe")
                .last_updated_at,
            secs(6),
            "{store}"
        );

        // Both, bound to a client token from the start.
        let rot = r
            .rotate(&o.tunnel_id, RotateSides::Both, Some(CLIENT_A), secs(8))
            .expect("rotate both");
        let (s, d) = (
            rot.source_token.expect("source"),
            rot.destination_token.expect("destination"),
        );
        let first = r.admit(s.expose(), Side::Source, None, secs(9));
        assert_eq!(first, Err(Refusal::ClientTokenMismatch), "{store}");
        let first = r.admit(s.expose(), Side::Source, Some(CLIENT_A), secs(9));
        assert!(!first.expect("bound token, its client token").reconnect);
        let first = r.admit(d.expose(), Side::Destination, Some(CLIENT_B), secs(9));
        assert_eq!(first, Err(Refusal::ClientTokenMismatch), "{store}");

        let bad = r.rotate(&o.tunnel_id, RotateSides::Both, Some("short"), secs(9));
        assert!(matches!(bad, Err(RegistryError::Invalid(_))), "{store}");
        let unknown = r.rotate("nope", RotateSides::Both, None, secs(9));
        assert!(
            matches!(unknown, Err(RegistryError::NotFound(_))),
            "{store}"
        );
    }
}

#[test]
fn close_refuses_peers_and_rotations_and_delete_forgets() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        r.close(&o.tunnel_id, false, secs(10)).expect("close");
        r.close(&o.tunnel_id, false, secs(11)).expect("close again");
        let t = r.describe(&o.tunnel_id, secs(12)).expect("still listed");
        assert_eq!(t.status, TunnelStatus::Closed, "{store}");
        assert_eq!(t.last_updated_at, secs(10), "{store}");
        let refused = r.admit(o.source_token.expose(), Side::Source, None, secs(12));
        assert_eq!(refused, Err(Refusal::TunnelClosed(o.tunnel_id.clone())));
        let rot = r.rotate(&o.tunnel_id, RotateSides::Both, None, secs(12));
        assert!(matches!(rot, Err(RegistryError::Closed(_))), "{store}");

        r.close(&o.tunnel_id, true, secs(13)).expect("delete");
        let gone = r.describe(&o.tunnel_id, secs(13));
        assert!(matches!(gone, Err(RegistryError::NotFound(_))), "{store}");
        let gone = r.close(&o.tunnel_id, false, secs(13));
        assert!(matches!(gone, Err(RegistryError::NotFound(_))), "{store}");
        assert_eq!(
            r.admit(
                o.destination_token.expose(),
                Side::Destination,
                None,
                secs(13)
            ),
            Err(Refusal::UnknownToken)
        );
    }
}

#[test]
fn expiry_by_lifetime() {
    for (store, r) in registries() {
        let short = OpenRequest {
            lifetime_seconds: Some(60),
            ..ssh()
        };
        let a = r.open(short, T0).expect("open");
        let b = r.open(ssh(), T0).expect("open");
        assert!(r.expire(secs(59)).expect("expire").is_empty(), "{store}");
        r.admit(
            a.source_token.expose(),
            Side::Source,
            Some(CLIENT_A),
            secs(59),
        )
        .expect("before the end of its lifetime");
        // A minute after it opened: closed, to the minute.
        let refused = r.admit(
            a.source_token.expose(),
            Side::Source,
            Some(CLIENT_A),
            secs(60),
        );
        assert_eq!(refused, Err(Refusal::TunnelClosed(a.tunnel_id.clone())));
        let t = r.describe(&a.tunnel_id, secs(61)).expect("describe");
        assert_eq!(t.status, TunnelStatus::Closed, "{store}");
        assert_eq!(t.last_updated_at, secs(60), "{store}");
        // expire() reports each tunnel once, when it closes it.
        let d = r
            .open(
                OpenRequest {
                    lifetime_seconds: Some(120),
                    ..ssh()
                },
                T0,
            )
            .expect("open");
        assert_eq!(r.expire(secs(120)).expect("expire"), [d.tunnel_id]);
        assert!(r.expire(secs(121)).expect("expire").is_empty(), "{store}");
        let open: Vec<_> = r
            .list(None, secs(121))
            .expect("list")
            .into_iter()
            .filter(|t| t.status == TunnelStatus::Open)
            .map(|t| t.id)
            .collect();
        assert_eq!(open, std::slice::from_ref(&b.tunnel_id), "{store}");
        // The default lifetime is 12 h.
        assert_eq!(r.expire(secs(720 * 60)).expect("expire"), [b.tunnel_id]);
    }
}

#[test]
fn open_checks_its_input() {
    for (store, r) in registries() {
        let cases = [
            (
                OpenRequest {
                    lifetime_seconds: Some(0),
                    ..ssh()
                },
                "is 0 seconds; it must be 1 second to 720 minutes",
            ),
            (
                OpenRequest {
                    lifetime_seconds: Some(721 * 60),
                    ..ssh()
                },
                "is 721 minutes; it must be 1 second to 720 minutes",
            ),
            (
                OpenRequest {
                    services: vec!["a".into(), "b".into(), "c".into(), "d".into()],
                    ..ssh()
                },
                "at most 3",
            ),
            (
                OpenRequest {
                    services: vec!["a".into(), "a".into()],
                    ..ssh()
                },
                "twice",
            ),
            (
                OpenRequest {
                    services: vec!["a b".into()],
                    ..ssh()
                },
                "a b",
            ),
            (
                OpenRequest {
                    services: vec![String::new()],
                    ..ssh()
                },
                "services",
            ),
            (
                OpenRequest {
                    thing_name: Some("x/y".into()),
                    ..ssh()
                },
                "thingName",
            ),
            (
                OpenRequest {
                    description: Some("a\nb".into()),
                    ..ssh()
                },
                "description",
            ),
        ];
        for (req, says) in cases {
            match r.open(req.clone(), T0) {
                Err(RegistryError::Invalid(m)) => assert!(m.contains(says), "{store}: {m}"),
                other => panic!("{store}: {req:?} gave {other:?}"),
            }
        }
        assert!(r.list(None, T0).expect("list").is_empty(), "{store}");
        // No services at all is allowed (SERVICE_IDS is then empty), as on AWS.
        r.open(OpenRequest::default(), T0).expect("no services");
    }
    // The operator may lift the limits.
    let r = Registry::new(
        Box::new(MemoryStore::default()),
        Limits {
            max_lifetime_seconds: 7 * 24 * 3600,
            max_services: 10,
            ..Limits::default()
        },
    );
    let req = OpenRequest {
        lifetime_seconds: Some(7 * 24 * 3600),
        services: (0..10).map(|i| format!("s{i}")).collect(),
        ..OpenRequest::default()
    };
    r.open(req, T0).expect("within the lifted limits");
}

#[test]
fn disconnected_clears_the_connection_state() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        r.admit(o.source_token.expose(), Side::Source, None, secs(1))
            .expect("admit");
        r.disconnected(&o.tunnel_id, Side::Source, secs(2))
            .expect("disconnected");
        let t = r.describe(&o.tunnel_id, secs(3)).expect("describe");
        assert!(!t.source.connected, "{store}");
        assert_eq!(t.source.updated_at, secs(2), "{store}");
        r.disconnected("gone", Side::Source, secs(3))
            .expect("an unknown tunnel is not an error");
    }
}

/// Open, rotate, close; drop the store; reopen the file: the tunnels, their states and the
/// token hashes are there, and no token is anywhere in the file.
#[test]
fn sqlite_survives_a_reopen_and_holds_no_token() {
    let dir = crate::relay::sqlite::tests::tempdir();
    let path = dir.join("nested").join("relay.db");
    let limits = Limits::default();
    let (kept, closed, rotated, tokens, before) = {
        let r = Registry::new(Box::new(SqliteStore::open(&path).expect("create")), limits);
        let kept = r.open(ssh(), T0).expect("open");
        let closed = r.open(OpenRequest::default(), secs(1)).expect("open");
        r.admit(
            kept.destination_token.expose(),
            Side::Destination,
            Some(CLIENT_A),
            secs(2),
        )
        .expect("admit");
        let rotated = r
            .rotate(&kept.tunnel_id, RotateSides::Source, None, secs(3))
            .expect("rotate")
            .source_token
            .expect("source");
        r.close(&closed.tunnel_id, false, secs(4)).expect("close");
        let tokens = [
            kept.source_token.clone(),
            kept.destination_token.clone(),
            rotated.clone(),
            closed.source_token.clone(),
            closed.destination_token.clone(),
        ];
        let before = r.list(None, secs(5)).expect("list");
        (kept, closed, rotated, tokens, before)
    };

    let bytes = std::fs::read(&path).expect("read the file");
    assert!(!bytes.is_empty());
    for t in &tokens {
        let t = t.expose().as_bytes();
        assert!(
            !bytes.windows(t.len()).any(|w| w == t),
            "a token is in the state file"
        );
    }
    assert!(
        bytes.windows(32).any(|w| w == rotated.hash().0),
        "the rotated token's hash is not in the file"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    for leftover in ["relay.db-journal", "relay.db-wal"] {
        assert!(!path.with_file_name(leftover).exists(), "{leftover}");
    }

    let r = Registry::new(Box::new(SqliteStore::open(&path).expect("reopen")), limits);
    assert_eq!(r.list(None, secs(5)).expect("list"), before);
    let t = r.describe(&kept.tunnel_id, secs(5)).expect("describe");
    assert_eq!(t.source.token, rotated.hash());
    assert!(t.destination.connected);
    assert_eq!(
        r.describe(&closed.tunnel_id, secs(5))
            .expect("closed")
            .status,
        TunnelStatus::Closed
    );
    // The token rules carry over: the old source token is dead, the new one works once, the
    // destination's is bound to its client token.
    assert_eq!(
        r.admit(kept.source_token.expose(), Side::Source, None, secs(6)),
        Err(Refusal::UnknownToken)
    );
    r.admit(rotated.expose(), Side::Source, None, secs(6))
        .expect("rotated token");
    assert_eq!(
        r.admit(rotated.expose(), Side::Source, None, secs(7)),
        Err(Refusal::TokenUsed)
    );
    let again = r
        .admit(
            kept.destination_token.expose(),
            Side::Destination,
            Some(CLIENT_A),
            secs(7),
        )
        .expect("reconnect after a restart");
    assert!(again.reconnect);
    assert_eq!(
        r.admit(
            kept.destination_token.expose(),
            Side::Destination,
            None,
            secs(7)
        ),
        Err(Refusal::ClientTokenMismatch)
    );
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reference §2: a client token is unique among the open tunnels; a closed tunnel's no
/// longer counts.
#[test]
fn a_client_token_belongs_to_one_open_tunnel() {
    for (store, r) in registries() {
        let a = r.open(ssh(), T0).expect("open");
        let b = r.open(ssh(), T0).expect("open");
        r.admit(
            a.source_token.expose(),
            Side::Source,
            Some(CLIENT_A),
            secs(1),
        )
        .expect("bind to tunnel a");
        // The other side of the same tunnel may bring it too.
        r.admit(
            a.destination_token.expose(),
            Side::Destination,
            Some(CLIENT_A),
            secs(1),
        )
        .expect("same tunnel");
        let taken = r.admit(
            b.source_token.expose(),
            Side::Source,
            Some(CLIENT_A),
            secs(2),
        );
        assert_eq!(taken, Err(Refusal::ClientTokenInUse), "{store}");
        assert_eq!(Refusal::ClientTokenInUse.status(), 409);
        let rot = r.rotate(&b.tunnel_id, RotateSides::Both, Some(CLIENT_A), secs(2));
        assert!(
            matches!(&rot, Err(RegistryError::Invalid(m)) if m.contains("in use")),
            "{store}: {rot:?}"
        );
        // The refusal did not spend b's token.
        r.admit(
            b.source_token.expose(),
            Side::Source,
            Some(CLIENT_B),
            secs(2),
        )
        .expect("another client token");

        r.close(&a.tunnel_id, false, secs(3)).expect("close a");
        let c = r.open(ssh(), secs(3)).expect("open");
        r.admit(
            c.source_token.expose(),
            Side::Source,
            Some(CLIENT_A),
            secs(4),
        )
        .expect("free again once a is closed");
    }
}

#[test]
fn reset_connections_after_a_restart() {
    for (store, r) in registries() {
        let a = r.open(ssh(), T0).expect("open");
        let b = r.open(ssh(), T0).expect("open");
        r.admit(a.source_token.expose(), Side::Source, None, secs(1))
            .expect("admit");
        r.admit(
            a.destination_token.expose(),
            Side::Destination,
            None,
            secs(1),
        )
        .expect("admit");
        assert_eq!(r.reset_connections(secs(2)).expect("reset"), 2, "{store}");
        let t = r.describe(&a.tunnel_id, secs(3)).expect("describe");
        assert!(!t.source.connected && !t.destination.connected, "{store}");
        assert_eq!((t.source.updated_at, t.last_updated_at), (secs(2), secs(2)));
        let untouched = r.describe(&b.tunnel_id, secs(3)).expect("describe");
        assert_eq!(untouched.last_updated_at, T0, "{store}");
        assert_eq!(r.reset_connections(secs(4)).expect("reset"), 0, "{store}");
    }
}

#[test]
fn cookie_check_looks_without_using_the_token() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        let src = o.source_token.expose();
        let dst = o.destination_token.expose();
        let left = 720 * 60 - 10;
        assert_eq!(
            r.cookie_check(src, secs(10)),
            CookieCheck::Valid { seconds_left: left },
            "{store}"
        );
        // Asking twice changes nothing: the upgrade is the token's use.
        assert_eq!(
            r.cookie_check(src, secs(10)),
            CookieCheck::Valid { seconds_left: left },
            "{store}"
        );
        r.admit(src, Side::Source, None, secs(11))
            .expect("the cookie check did not use the token");
        assert_eq!(r.cookie_check(src, secs(12)), CookieCheck::Used, "{store}");
        assert_eq!(
            r.cookie_check("no-such-token", secs(12)),
            CookieCheck::Unknown,
            "{store}"
        );
        // Past its lifetime; then closed.
        assert_eq!(
            r.cookie_check(dst, T0.plus_seconds(720 * 60)),
            CookieCheck::Closed,
            "{store}"
        );
        let o2 = r.open(ssh(), T0).expect("open");
        r.close(&o2.tunnel_id, false, secs(1)).expect("close");
        assert_eq!(
            r.cookie_check(o2.source_token.expose(), secs(2)),
            CookieCheck::Closed,
            "{store}"
        );
    }
}

/// Pairing by certificate: the first destination of an identity makes its tunnel with the
/// services it announces, a source before it is told to retry, both re-pair into it, a
/// closed tunnel is replaced on the next contact, and other identities get their own.
#[test]
fn pairing_by_certificate_identity() {
    let id = "spiffe://fleet.test/pair/1";
    let services = vec!["ssh".to_string(), "web".to_string()];
    for (store, r) in registries() {
        assert_eq!(
            r.admit_identity(id, Side::Source, &[], T0),
            Err(Refusal::NoPairYet),
            "{store}"
        );
        let d = r
            .admit_identity(id, Side::Destination, &services, T0)
            .expect("the destination makes the tunnel");
        assert_eq!(d.services, services);
        assert_eq!(d.pairing, Pairing::Certificate(id.into()));
        assert!(!d.reconnect);
        let s = r
            .admit_identity(id, Side::Source, &[], secs(1))
            .expect("pairs");
        assert_eq!(s.tunnel_id, d.tunnel_id, "{store}");
        assert_eq!(s.services, services);
        // A reconnect re-pairs into the same tunnel, marked as such.
        let again = r.admit_identity(id, Side::Source, &[], secs(2)).unwrap();
        assert_eq!(
            (again.tunnel_id.as_str(), again.reconnect),
            (d.tunnel_id.as_str(), true)
        );
        let t = r.describe(&d.tunnel_id, secs(2)).unwrap();
        assert_eq!(t.pairing, Pairing::Certificate(id.into()));
        assert!(t.source.connected && t.destination.connected);
        // Other services from the same identity: refused, the tunnel stays.
        let e = r
            .admit_identity(id, Side::Destination, &["x".into()], secs(3))
            .unwrap_err();
        assert_eq!(e.status(), 409, "{store}: {e}");
        // Another identity is another tunnel.
        let other = r
            .admit_identity("f".repeat(64).as_str(), Side::Destination, &[], secs(3))
            .unwrap();
        assert_ne!(other.tunnel_id, d.tunnel_id);
        // Certificate tunnels have no tokens to rotate.
        assert!(matches!(
            r.rotate(&d.tunnel_id, RotateSides::Both, None, secs(3)),
            Err(RegistryError::Invalid(_))
        ));
        // Closed: the next contact makes a new one.
        r.close(&d.tunnel_id, false, secs(4)).unwrap();
        assert_eq!(
            r.admit_identity(id, Side::Source, &[], secs(5)),
            Err(Refusal::NoPairYet)
        );
        let d2 = r
            .admit_identity(id, Side::Destination, &services, secs(5))
            .unwrap();
        assert_ne!(d2.tunnel_id, d.tunnel_id, "{store}");
        // Bad announced services are refused.
        let e = r
            .admit_identity(
                "spiffe://x",
                Side::Destination,
                &["no spaces".into()],
                secs(5),
            )
            .unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
    }
}

/// The pairing is kept across a reopen of the SQLite file.
#[test]
fn pairing_is_persisted() {
    let dir = crate::relay::sqlite::tests::tempdir();
    let path = dir.join("relay.db");
    let r = Registry::new(
        Box::new(SqliteStore::open(&path).unwrap()),
        Limits::default(),
    );
    let d = r
        .admit_identity("abcd", Side::Destination, &["ssh".into()], T0)
        .unwrap();
    let thing = r
        .open(
            OpenRequest {
                thing_name: Some("pump-7".into()),
                pairing: Pairing::Thing("pump-7".into()),
                ..ssh()
            },
            T0,
        )
        .unwrap();
    drop(r);
    let r = Registry::new(
        Box::new(SqliteStore::open(&path).unwrap()),
        Limits::default(),
    );
    assert_eq!(
        r.describe(&d.tunnel_id, T0).unwrap().pairing,
        Pairing::Certificate("abcd".into())
    );
    assert_eq!(
        r.describe(&thing.tunnel_id, T0).unwrap().pairing,
        Pairing::Thing("pump-7".into())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A closed tunnel, by a call or by its lifetime, stays listed and describable for
/// `keep_closed_seconds` from its closing, then the registry forgets it (and its tokens);
/// open tunnels are never forgotten.
#[test]
fn closed_tunnels_are_forgotten_after_keep_closed() {
    const KEEP: u64 = 3 * 3600;
    for (store, r) in registries() {
        assert_eq!(
            r.limits.keep_closed_seconds, KEEP,
            "AWS: at least three hours"
        );
        let closed = r.open(ssh(), T0).expect("open");
        let short = OpenRequest {
            lifetime_seconds: Some(60),
            ..ssh()
        };
        let expired = r.open(short, T0).expect("open");
        let open = r.open(ssh(), T0).expect("open");
        r.close(&closed.tunnel_id, false, secs(10)).expect("close");
        assert_eq!(
            r.expire(secs(100)).expect("expire"),
            std::slice::from_ref(&expired.tunnel_id)
        );

        assert_eq!(
            r.forget_closed(secs(10 + KEEP)).expect("forget"),
            0,
            "{store}"
        );
        assert_eq!(
            r.list(None, secs(10 + KEEP)).expect("list").len(),
            3,
            "{store}"
        );
        // Forgotten once closed longer than the retention, counted from the closing (the
        // end of the lifetime for the expired one, not when the sweep noticed it).
        assert_eq!(
            r.forget_closed(secs(11 + KEEP)).expect("forget"),
            1,
            "{store}"
        );
        assert!(matches!(
            r.describe(&closed.tunnel_id, secs(11 + KEEP)),
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(
            r.admit(
                closed.source_token.expose(),
                Side::Source,
                None,
                secs(11 + KEEP)
            ),
            Err(Refusal::UnknownToken),
            "{store}"
        );
        assert_eq!(
            r.forget_closed(secs(61 + KEEP)).expect("forget"),
            1,
            "{store}"
        );
        let left: Vec<String> = r
            .list(None, secs(61 + KEEP))
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(left, std::slice::from_ref(&open.tunnel_id), "{store}");
        assert_eq!(
            r.forget_closed(secs(10 * KEEP)).expect("forget"),
            0,
            "{store}"
        );
        r.admit(
            open.source_token.expose(),
            Side::Source,
            None,
            secs(10 * KEEP),
        )
        .expect_err("the default lifetime is over by then");
    }
}

/// `keep_closed_seconds = 0`: a closed tunnel goes at the next sweep.
#[test]
fn keep_closed_zero_forgets_at_the_next_sweep() {
    let r = Registry::new(
        Box::new(MemoryStore::default()),
        Limits {
            keep_closed_seconds: 0,
            ..Limits::default()
        },
    );
    let o = r.open(ssh(), T0).expect("open");
    r.close(&o.tunnel_id, false, secs(5)).expect("close");
    assert_eq!(
        r.forget_closed(secs(5)).expect("forget"),
        0,
        "not before its closing"
    );
    assert_eq!(
        r.forget_closed(Timestamp(secs(5).0 + 1)).expect("forget"),
        1
    );
}

/// The admissions map holds only the sides with a peer on them: a peer that goes takes its
/// entry (a stale one from a replaced peer changes nothing), and so does a forgotten tunnel.
#[test]
fn admissions_are_kept_only_while_a_peer_is_there() {
    for (store, r) in registries() {
        let o = r.open(ssh(), T0).expect("open");
        let first = r
            .admit(
                o.source_token.expose(),
                Side::Source,
                Some(CLIENT_A),
                secs(1),
            )
            .expect("admit");
        let second = r
            .admit(
                o.source_token.expose(),
                Side::Source,
                Some(CLIENT_A),
                secs(2),
            )
            .expect("the same client token reconnects");
        let dest = r
            .admit(
                o.destination_token.expose(),
                Side::Destination,
                None,
                secs(2),
            )
            .expect("admit");
        assert_eq!(r.latest().len(), 2, "{store}");
        // The replaced peer's end comes after its successor's admission: nothing changes.
        r.abandoned(&first, secs(3)).expect("gone");
        assert_eq!(r.latest().len(), 2, "{store}");
        assert!(
            r.describe(&o.tunnel_id, secs(3)).unwrap().source.connected,
            "{store}"
        );
        r.gone(&o.tunnel_id, Side::Source, second.serial, secs(4))
            .expect("gone");
        assert_eq!(r.latest().len(), 1, "{store}");
        assert!(
            !r.describe(&o.tunnel_id, secs(4)).unwrap().source.connected,
            "{store}"
        );
        // Closed and forgotten with its destination still counted as there.
        r.close(&o.tunnel_id, false, secs(5)).expect("close");
        r.forget_closed(secs(5 + 3 * 3600 + 1)).expect("forget");
        assert!(r.latest().is_empty(), "{store}");
        // Its destination's end, after the tunnel was forgotten: not an error.
        r.abandoned(&dest, secs(5 + 3 * 3600 + 2))
            .expect("an unknown tunnel is not an error");
    }
}

/// `of_thing` and `list(Some(thing))` give that thing's tunnels only, oldest first.
#[test]
fn tunnels_of_a_thing() {
    for (store, r) in registries() {
        let for_thing = |thing: &str| OpenRequest {
            thing_name: Some(thing.into()),
            ..ssh()
        };
        let a1 = r.open(for_thing("a"), secs(1)).expect("open").tunnel_id;
        let b1 = r.open(for_thing("b"), secs(2)).expect("open").tunnel_id;
        let a2 = r.open(for_thing("a"), secs(3)).expect("open").tunnel_id;
        let none = OpenRequest {
            thing_name: None,
            ..ssh()
        };
        r.open(none, secs(4)).expect("open");
        let ids = |ts: Vec<Tunnel>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(
            ids(r.of_thing("a").unwrap()),
            [a1.clone(), a2.clone()],
            "{store}"
        );
        assert_eq!(
            ids(r.list(Some("a"), secs(5)).unwrap()),
            [a1, a2],
            "{store}"
        );
        assert_eq!(ids(r.of_thing("b").unwrap()), [b1], "{store}");
        assert!(r.of_thing("c").unwrap().is_empty(), "{store}");
        assert_eq!(r.list(None, secs(5)).unwrap().len(), 4, "{store}");
    }
}

/// A whole listing is read in parts ([`LIST_CHUNK`] per hold of the lock): across parts that
/// end among tunnels opened in the same millisecond it is still every tunnel once, in order,
/// on every store; from a position, the rest of the list.
#[test]
fn a_whole_list_read_in_parts_is_every_tunnel_once_in_order() {
    for (store, r) in registries() {
        let n = 2 * LIST_CHUNK + 10;
        // Three instants only, so that parts end within a run of equal creation times.
        for i in 0..n {
            let req = OpenRequest {
                thing_name: Some(if i % 3 == 0 { "a" } else { "b" }.into()),
                services: vec!["ssh".into()],
                ..OpenRequest::default()
            };
            r.open(req, secs((i % 3) as u64)).expect("open");
        }
        let mut expected = r.store().list().expect("store list");
        assert_eq!(expected.len(), n, "{store}");
        let listed = r.list(None, secs(5)).expect("list");
        assert_eq!(listed, expected, "{store}: oldest first");
        expected.reverse();
        assert_eq!(r.newest_first(None, None, secs(5)).expect("list"), expected);
        let from = ListPosition::of(&expected[LIST_CHUNK + 3]);
        let rest = r.newest_first(None, Some(&from), secs(5)).expect("rest");
        assert_eq!(rest, expected[LIST_CHUNK + 4..], "{store}");
        let of_b: Vec<Tunnel> = expected
            .iter()
            .filter(|t| t.thing_name.as_deref() == Some("b"))
            .cloned()
            .collect();
        assert!(of_b.len() > LIST_CHUNK, "{store}");
        let listed_b = r.newest_first(Some("b"), None, secs(5)).expect("of b");
        assert_eq!(listed_b, of_b, "{store}");
    }
}

/// Tunnels opened in one burst end in one: the expiry timer closes them, and later forgets
/// them, [`SWEEP_PART`] per hold of the lock, and still every one of them, on every store.
#[test]
fn a_burst_of_ends_is_closed_and_forgotten_in_parts() {
    for (store, r) in registries() {
        let n = 3 * SWEEP_PART + 5;
        let mut ids: Vec<String> = (0..n)
            .map(|i| {
                let req = OpenRequest {
                    thing_name: Some(format!("t{i}")),
                    services: vec!["ssh".into()],
                    lifetime_seconds: Some(60),
                    ..OpenRequest::default()
                };
                r.open(req, T0).expect("open").tunnel_id
            })
            .collect();
        let kept = r.open(ssh(), secs(30)).expect("open").tunnel_id;
        let mut closed = r.expire(secs(60)).expect("expire");
        closed.sort();
        ids.sort();
        assert_eq!(closed, ids, "{store}");
        let all = r.list(None, secs(60)).expect("list");
        assert_eq!(all.len(), n + 1, "{store}");
        assert!(
            all.iter()
                .all(|t| (t.status == TunnelStatus::Open) == (t.id == kept)),
            "{store}"
        );
        let later = Timestamp(secs(60).0 + Limits::default().keep_closed_seconds * 1000 + 1);
        assert_eq!(r.forget_closed(later).expect("forget"), n, "{store}");
        let left: Vec<String> = r
            .list(None, later)
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(left, std::slice::from_ref(&kept), "{store}");
    }
}
