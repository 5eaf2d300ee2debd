//! The stores' lookups against a plain scan of the same records, over random histories of
//! puts (a record replaced with another status, thing, client token, pairing, tokens) and
//! removes: the memory store's indexes must follow every change.

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::relay::sqlite::SqliteStore;
use crate::relay::tunnel::{Peer, TokenUse};
use crate::relay::writer::WriteBehind;

/// What each lookup should answer, by scanning `records`.
struct Oracle {
    records: BTreeMap<String, Tunnel>,
}

impl Oracle {
    fn sorted(&self, keep: impl Fn(&Tunnel) -> bool) -> Vec<Tunnel> {
        let mut v: Vec<Tunnel> = self.records.values().filter(|t| keep(t)).cloned().collect();
        oldest_first(&mut v);
        v
    }
}

fn hash(rng: &mut StdRng) -> TokenHash {
    TokenHash(rng.random())
}

fn random_tunnel(rng: &mut StdRng, id: String) -> Tunnel {
    let pick = |rng: &mut StdRng, options: &[&str]| {
        options[rng.random_range(0..options.len())].to_string()
    };
    let clients = [TokenHash([1; 32]), TokenHash([2; 32])];
    let peer = |rng: &mut StdRng| Peer {
        token: hash(rng),
        token_use: TokenUse {
            used: rng.random(),
            client: rng
                .random_bool(0.4)
                .then(|| clients[rng.random_range(0..2)]),
        },
        connected: rng.random(),
        updated_at: Timestamp(rng.random_range(0..100)),
    };
    let pairing = match rng.random_range(0..3) {
        0 => Pairing::Token,
        1 => Pairing::Certificate(pick(rng, &["c1", "c2"])),
        _ => Pairing::Thing(pick(rng, &["t1", "t2"])),
    };
    Tunnel {
        id,
        description: None,
        thing_name: rng.random_bool(0.7).then(|| pick(rng, &["t1", "t2", "t3"])),
        services: vec!["ssh".into()],
        lifetime_seconds: rng.random_range(1..4),
        status: if rng.random_bool(0.5) {
            TunnelStatus::Open
        } else {
            TunnelStatus::Closed
        },
        created_at: Timestamp(rng.random_range(0..3) * 1000),
        last_updated_at: Timestamp(rng.random_range(0..5000)),
        source: peer(rng),
        destination: peer(rng),
        pairing,
    }
}

fn stores() -> Vec<(&'static str, Box<dyn TunnelStore>)> {
    let sqlite = || Box::new(SqliteStore::open(Path::new(":memory:")).expect("sqlite"));
    vec![
        ("memory", Box::new(MemoryStore::default())),
        ("sqlite", sqlite()),
        (
            "written behind",
            Box::new(WriteBehind::new(sqlite()).expect("write-behind")),
        ),
    ]
}

#[test]
fn lookups_follow_every_change() {
    for seed in 0..8 {
        for (name, mut store) in stores() {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut oracle = Oracle {
                records: BTreeMap::new(),
            };
            for step in 0..300 {
                let id = format!("tunnel-{}", rng.random_range(0..12));
                if rng.random_bool(0.2) {
                    let was = oracle.records.remove(&id).is_some();
                    assert_eq!(
                        store.remove(&id).unwrap(),
                        was,
                        "{name} seed {seed} step {step}"
                    );
                } else {
                    let t = random_tunnel(&mut rng, id.clone());
                    store.put(&t).unwrap();
                    oracle.records.insert(id, t);
                }
                check(
                    &*store,
                    &oracle,
                    &mut rng,
                    &format!("{name} seed {seed} step {step}"),
                );
            }
        }
    }
}

fn check(store: &dyn TunnelStore, oracle: &Oracle, rng: &mut StdRng, at: &str) {
    assert_eq!(store.list().unwrap(), oracle.sorted(|_| true), "{at}: list");
    check_pages(store, oracle, at);
    for t in oracle.records.values() {
        assert_eq!(store.get(&t.id).unwrap().as_ref(), Some(t), "{at}: get");
        for side in Side::BOTH {
            let found = store.find_by_token(&t.peer(side).token).unwrap();
            assert_eq!(found.as_ref(), Some(t), "{at}: find_by_token");
        }
    }
    assert_eq!(
        store.find_by_token(&hash(rng)).unwrap(),
        None,
        "{at}: an unknown token"
    );
    for c in [TokenHash([1; 32]), TokenHash([2; 32]), TokenHash([3; 32])] {
        let want = oracle.sorted(|t| {
            Side::BOTH
                .iter()
                .any(|s| t.peer(*s).token_use.client == Some(c))
        });
        let mut got = store.find_by_client_token(&c).unwrap();
        oldest_first(&mut got);
        assert_eq!(got, want, "{at}: find_by_client_token");
    }
    for p in [
        Pairing::Token,
        Pairing::Certificate("c1".into()),
        Pairing::Thing("t2".into()),
        Pairing::Thing("t9".into()),
    ] {
        let want = oracle.sorted(|t| t.pairing == p);
        assert_eq!(store.find_by_pairing(&p).unwrap(), want, "{at}: {p:?}");
    }
    for thing in ["t1", "t3", "t9"] {
        let want = oracle.sorted(|t| t.thing_name.as_deref() == Some(thing));
        assert_eq!(
            store.find_by_thing(thing).unwrap(),
            want,
            "{at}: thing {thing}"
        );
    }
    for now in [0, 1000, 2500, 4000, 9000] {
        let now = Timestamp(now);
        let mut due = oracle.sorted(|t| t.status == TunnelStatus::Open && t.expires_at() <= now);
        due.sort_by(|a, b| (a.expires_at(), &a.id).cmp(&(b.expires_at(), &b.id)));
        let mut closed =
            oracle.sorted(|t| t.status == TunnelStatus::Closed && t.last_updated_at < now);
        closed.sort_by(|a, b| (a.last_updated_at, &a.id).cmp(&(b.last_updated_at, &b.id)));
        let closed: Vec<String> = closed.into_iter().map(|t| t.id).collect();
        for limit in [1, 3, usize::MAX] {
            let want: Vec<Tunnel> = due.iter().take(limit).cloned().collect();
            assert_eq!(
                store.lifetime_over(now, limit).unwrap(),
                want,
                "{at}: lifetime_over, limit {limit}"
            );
            let want: Vec<String> = closed.iter().take(limit).cloned().collect();
            assert_eq!(
                store.closed_before(now, limit).unwrap(),
                want,
                "{at}: closed_before, limit {limit}"
            );
        }
    }
}

/// `page`, walked to the end by each page's last tunnel, gives the list newest first; a page
/// after a place that is no tunnel's starts where that place would be.
fn check_pages(store: &dyn TunnelStore, oracle: &Oracle, at: &str) {
    for thing in [None, Some("t1"), Some("t9")] {
        let mut want = oracle.sorted(|t| thing.is_none() || t.thing_name.as_deref() == thing);
        want.reverse();
        for limit in [1, 3, usize::MAX] {
            let (mut got, mut after) = (Vec::new(), None);
            loop {
                let page = store.page(thing, after.as_ref(), limit).unwrap();
                assert!(page.len() <= limit, "{at}: page of {}", page.len());
                let Some(last) = page.last() else { break };
                after = Some(ListPosition::of(last));
                got.extend(page);
                assert!(got.len() <= want.len(), "{at}: pages repeat tunnels");
            }
            assert_eq!(got, want, "{at}: pages of {limit} of {thing:?}");
        }
        if let Some(mid) = want.get(want.len() / 2) {
            // Just after `mid`'s place: an id that sorts before its own.
            let place = ListPosition {
                created_at: mid.created_at,
                id: mid.id[..mid.id.len() - 1].to_string(),
            };
            let rest: Vec<Tunnel> = want.iter().filter(|t| place.precedes(t)).cloned().collect();
            assert_eq!(
                store.page(thing, Some(&place), usize::MAX).unwrap(),
                rest,
                "{at}: after a place of no tunnel"
            );
        }
    }
}
