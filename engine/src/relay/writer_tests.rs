//! The registry on a write-behind store whose disk is held still by the test: its calls
//! answer from memory, the writes land in order once the disk moves, and what must be on
//! disk first (a token's first use, the API's changes) waits for it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::relay::registry::{Admission, Limits, OpenRequest, Opened, Registry};
use crate::relay::tunnel::{Side, Timestamp};

const T0: Timestamp = Timestamp(1_800_000_000_000);
const CLIENT: &str = "0123456789abcdef-0123456789abcdef";
/// Long enough for a call that would wait for the disk to be seen waiting.
const A_WHILE: Duration = Duration::from_millis(200);

/// The disk: a memory store behind a gate the test opens and closes, failing on demand.
#[derive(Clone, Default)]
struct Disk {
    records: Arc<Mutex<MemoryStore>>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

#[derive(Default)]
struct Gate {
    held: bool,
    /// Every write fails while set.
    failing: bool,
    /// Writes done.
    writes: usize,
    /// Every commit fails while set.
    commit_failing: bool,
    /// Commits (of batches) done.
    commits: usize,
}

impl Disk {
    fn hold(&self, held: bool) {
        self.gate.0.lock().unwrap().held = held;
        self.gate.1.notify_all();
    }

    fn fail(&self, failing: bool) {
        self.gate.0.lock().unwrap().failing = failing;
    }

    fn writes(&self) -> usize {
        self.gate.0.lock().unwrap().writes
    }

    fn fail_commits(&self, failing: bool) {
        self.gate.0.lock().unwrap().commit_failing = failing;
    }

    fn commits(&self) -> usize {
        self.gate.0.lock().unwrap().commits
    }

    fn record(&self, id: &str) -> Tunnel {
        self.records
            .lock()
            .unwrap()
            .get(id)
            .unwrap()
            .expect("on disk")
    }

    /// Waits at the gate; then whether to fail.
    fn pass(&self) -> Result<(), StoreError> {
        let mut g = self.gate.0.lock().unwrap();
        while g.held {
            g = self.gate.1.wait(g).unwrap();
        }
        g.writes += 1;
        if g.failing {
            return Err(StoreError("disk full".into()));
        }
        Ok(())
    }
}

impl TunnelStore for Disk {
    fn put(&mut self, tunnel: &Tunnel) -> Result<(), StoreError> {
        self.pass()?;
        self.records.lock().unwrap().put(tunnel)
    }
    fn get(&self, id: &str) -> Result<Option<Tunnel>, StoreError> {
        self.records.lock().unwrap().get(id)
    }
    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Tunnel>, StoreError> {
        self.records.lock().unwrap().find_by_token(hash)
    }
    fn find_by_client_token(&self, hash: &TokenHash) -> Result<Vec<Tunnel>, StoreError> {
        self.records.lock().unwrap().find_by_client_token(hash)
    }
    fn list(&self) -> Result<Vec<Tunnel>, StoreError> {
        self.records.lock().unwrap().list()
    }
    fn find_by_pairing(&self, pairing: &Pairing) -> Result<Vec<Tunnel>, StoreError> {
        self.records.lock().unwrap().find_by_pairing(pairing)
    }
    fn find_by_thing(&self, thing: &str) -> Result<Vec<Tunnel>, StoreError> {
        self.records.lock().unwrap().find_by_thing(thing)
    }
    fn page(
        &self,
        thing: Option<&str>,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Vec<Tunnel>, StoreError> {
        self.records.lock().unwrap().page(thing, after, limit)
    }
    fn lifetime_over(&self, now: Timestamp, limit: usize) -> Result<Vec<Tunnel>, StoreError> {
        self.records.lock().unwrap().lifetime_over(now, limit)
    }
    fn closed_before(&self, before: Timestamp, limit: usize) -> Result<Vec<String>, StoreError> {
        self.records.lock().unwrap().closed_before(before, limit)
    }
    fn remove(&mut self, id: &str) -> Result<bool, StoreError> {
        self.pass()?;
        self.records.lock().unwrap().remove(id)
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        let mut g = self.gate.0.lock().unwrap();
        g.commits += 1;
        if g.commit_failing {
            return Err(StoreError("fsync failed".into()));
        }
        Ok(())
    }
}

fn registry(disk: &Disk) -> Arc<Registry> {
    let store = WriteBehind::new(Box::new(disk.clone())).expect("write-behind");
    Arc::new(Registry::new(Box::new(store), Limits::default()))
}

fn one_service() -> OpenRequest {
    OpenRequest {
        services: vec!["ssh".into()],
        ..OpenRequest::default()
    }
}

/// Admission while the disk is held: the registry answers at once (the shard is not held
/// up), the tickets are pending until the disk moves, and the API already says connected.
#[test]
fn admission_answers_while_the_disk_is_held() {
    let disk = Disk::default();
    let r = registry(&disk);
    let o = r.open(one_service(), T0).expect("open");
    let token = o.source_token.expose().to_string();
    disk.hold(true);
    let first = r
        .admit(&token, Side::Source, Some(CLIENT), T0)
        .expect("admitted");
    assert!(first.durable.poll().is_none(), "on disk already?");
    assert!(r.describe(&o.tunnel_id, T0).unwrap().source.connected);
    assert!(
        !disk.record(&o.tunnel_id).source.token_use.used,
        "written through the held disk"
    );
    // The same token again, while its first use is not on disk: taken from memory, so a
    // single-use token is refused and this one (bound to its client token) is a reconnect.
    let again = r
        .admit(&token, Side::Source, Some(CLIENT), T0)
        .expect("a reconnect");
    assert!(again.reconnect);
    std::thread::sleep(A_WHILE);
    assert!(first.durable.poll().is_none(), "done with the disk held");
    assert!(again.durable.poll().is_none(), "done with the disk held");
    disk.hold(false);
    first.durable.wait().expect("on disk");
    again.durable.wait().expect("on disk");
    let on_disk = disk.record(&o.tunnel_id);
    assert!(on_disk.source.token_use.used && on_disk.source.token_use.client.is_some());
}

/// A single-use token (no client token) is refused a second time while its first use is
/// still on its way to disk, and the write wakes whoever waits for it, on the writer's thread.
#[test]
fn single_use_token_is_used_before_it_is_on_disk() {
    let disk = Disk::default();
    let r = registry(&disk);
    let o = r.open(one_service(), T0).expect("open");
    let token = o.destination_token.expose().to_string();
    disk.hold(true);
    let first = r
        .admit(&token, Side::Destination, None, T0)
        .expect("admitted");
    let (tx, rx) = std::sync::mpsc::channel();
    first.durable.on_ready(move || tx.send(()).unwrap());
    assert_eq!(
        r.admit(&token, Side::Destination, None, T0).unwrap_err(),
        crate::relay::registry::Refusal::TokenUsed
    );
    assert!(
        rx.recv_timeout(A_WHILE).is_err(),
        "woken with the disk held"
    );
    disk.hold(false);
    rx.recv_timeout(Duration::from_secs(10)).expect("woken");
    assert!(disk.record(&o.tunnel_id).destination.token_use.used);
}

/// A tunnel made by a certificate identity's first contact is answered from memory while
/// the disk is held, and its creation is on disk before the peer gets its 101.
#[test]
fn identity_tunnel_waits_for_the_disk_before_its_answer() {
    let disk = Disk::default();
    let r = registry(&disk);
    disk.hold(true);
    let a = r
        .admit_identity(
            "spiffe://fleet/dev-1",
            Side::Destination,
            &["ssh".into()],
            T0,
        )
        .expect("admitted");
    assert!(a.durable.poll().is_none(), "on disk already?");
    std::thread::sleep(A_WHILE);
    assert!(a.durable.poll().is_none(), "done with the disk held");
    assert!(r.describe(&a.tunnel_id, T0).unwrap().destination.connected);
    disk.hold(false);
    a.durable.wait().expect("on disk");
    assert!(disk.record(&a.tunnel_id).destination.connected);
}

/// The API's calls answer once their change is on disk (a rotation that a crash would undo
/// would bring the old tokens back), without holding the registry: admission goes on.
#[test]
fn api_calls_wait_for_the_disk_but_not_the_shards() {
    let disk = Disk::default();
    let r = registry(&disk);
    let o = r.open(one_service(), T0).expect("open");
    disk.hold(true);
    let rotating = {
        let (r, id) = (r.clone(), o.tunnel_id.clone());
        std::thread::spawn(move || {
            r.rotate(&id, crate::relay::registry::RotateSides::Source, None, T0)
        })
    };
    std::thread::sleep(A_WHILE);
    assert!(
        !rotating.is_finished(),
        "answered before its change was on disk"
    );
    // Meanwhile a shard admits the other side, from memory.
    r.admit(o.destination_token.expose(), Side::Destination, None, T0)
        .expect("admitted while the API waits");
    disk.hold(false);
    let rotated = rotating.join().unwrap().expect("rotated");
    let new = rotated.source_token.expect("a new source token");
    assert!(disk.record(&o.tunnel_id).source.token.matches(&new.hash()));
}

/// A write that fails: the barrier after it says so (the shard answers 503, the API 503), and
/// the token's use stays recorded in memory, so the token is still never taken twice.
#[test]
fn a_failed_write_is_reported_by_the_next_barrier() {
    let disk = Disk::default();
    let r = registry(&disk);
    let o = r.open(one_service(), T0).expect("open");
    disk.fail(true);
    let a = r
        .admit(o.source_token.expose(), Side::Source, None, T0)
        .expect("admitted");
    let e = a.durable.wait().unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
    assert!(
        r.admit(o.source_token.expose(), Side::Source, None, T0)
            .is_err()
    );
    let e = r.close(&o.tunnel_id, false, T0).unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
    disk.fail(false);
    r.close(&o.tunnel_id, false, T0).expect("closed");
}

/// Writes reach the disk in the order they were made, and the memory is read from the disk
/// when the store starts.
#[test]
fn writes_land_in_order() {
    let disk = Disk::default();
    let ids: Vec<String> = {
        let r = registry(&disk);
        disk.hold(true);
        let opened: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || r.open(one_service(), T0).expect("open"))
            })
            .collect();
        std::thread::sleep(A_WHILE);
        disk.hold(false);
        let opened: Vec<_> = opened.into_iter().map(|t| t.join().unwrap()).collect();
        for o in &opened {
            r.admit(o.source_token.expose(), Side::Source, None, T0)
                .expect("admitted");
            r.disconnected(&o.tunnel_id, Side::Source, T0)
                .expect("disconnected");
        }
        r.close(&opened[0].tunnel_id, true, T0).expect("deleted");
        opened.into_iter().map(|o| o.tunnel_id).collect()
        // Dropped: what is queued is written.
    };
    assert_eq!(disk.writes(), 2 + 2 * 2 + 1);
    let records = disk.records.lock().unwrap().list().unwrap();
    assert_eq!(records.len(), 1);
    let t = &records[0];
    assert_eq!(t.id, ids[1]);
    assert!(t.source.token_use.used && !t.source.connected);
    let r = registry(&disk);
    assert_eq!(r.list(None, T0).unwrap().len(), 1);
}

/// A peer that went before it reached its tunnel leaves its side disconnected, unless a
/// later peer was admitted on that side meanwhile (then that one is there).
#[test]
fn an_abandoned_admission_disconnects_only_its_own_peer() {
    let disk = Disk::default();
    let r = registry(&disk);
    let o = r.open(one_service(), T0).expect("open");
    let token = o.source_token.expose();
    let first = r.admit(token, Side::Source, Some(CLIENT), T0).unwrap();
    let second = r.admit(token, Side::Source, Some(CLIENT), T0).unwrap();
    r.abandoned(&first, T0).unwrap();
    assert!(r.describe(&o.tunnel_id, T0).unwrap().source.connected);
    r.abandoned(&second, T0).unwrap();
    assert!(!r.describe(&o.tunnel_id, T0).unwrap().source.connected);
}

#[test]
fn open_on_a_stopped_writer_is_an_error_not_a_hang() {
    let d = Durable::pending();
    d.complete(Err("stopped".into()));
    assert!(d.wait().is_err());
    assert!(matches!(d.poll(), Some(Err(_))));
    let (tx, rx) = std::sync::mpsc::channel();
    d.on_ready(move || tx.send(()).unwrap());
    rx.try_recv().expect("called at once");
}

fn open_tunnels(r: &Registry, n: usize) -> Vec<Opened> {
    (0..n)
        .map(|_| r.open(one_service(), T0).expect("open"))
        .collect()
}

/// Each tunnel's source admitted once, without a client token.
fn admit_sources(r: &Registry, opened: &[Opened]) -> Vec<Admission> {
    opened
        .iter()
        .map(|o| {
            r.admit(o.source_token.expose(), Side::Source, None, T0)
                .expect("admitted")
        })
        .collect()
}

/// Group commit: the admissions that queue up while the disk is busy are written in one
/// transaction, and each one's ticket completes once that is committed.
#[test]
fn admissions_queued_behind_the_disk_are_committed_together() {
    let disk = Disk::default();
    let r = registry(&disk);
    let opened = open_tunnels(&r, 50);
    let before = disk.commits();
    disk.hold(true);
    let admitted = admit_sources(&r, &opened);
    std::thread::sleep(A_WHILE);
    assert!(admitted.iter().all(|a| a.durable.poll().is_none()));
    disk.hold(false);
    for a in &admitted {
        a.durable.wait().expect("on disk");
    }
    // The batch the writer was in when the disk stopped, then everything queued behind it.
    let commits = disk.commits() - before;
    assert!(
        (1..=2).contains(&commits),
        "{commits} commits for 50 admissions"
    );
    for o in &opened {
        assert!(disk.record(&o.tunnel_id).source.token_use.used);
    }
}

/// A failed commit fails every ticket of its batch, and the next ticket too (changes made
/// after the batch's last ticket were in it); after that, tickets succeed again.
#[test]
fn a_failed_commit_fails_its_whole_batch() {
    let disk = Disk::default();
    let r = registry(&disk);
    let opened = open_tunnels(&r, 3);
    disk.hold(true);
    disk.fail_commits(true);
    let admitted = admit_sources(&r, &opened);
    disk.hold(false);
    for a in &admitted {
        let e = a.durable.wait().unwrap_err();
        assert!(e.to_string().contains("fsync failed"), "{e}");
    }
    disk.fail_commits(false);
    let e = r.close(&opened[0].tunnel_id, false, T0).unwrap_err();
    assert!(e.to_string().contains("fsync failed"), "{e}");
    r.close(&opened[1].tunnel_id, false, T0).expect("closed");
}
