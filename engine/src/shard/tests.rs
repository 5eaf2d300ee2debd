//! Unit tests of the shard's own logic (accepting, refusing, backing off, listeners, drain,
//! stale completions, timers) against the fake driver and the sys fake: no sockets, no
//! io_uring, no epoll. The fds are real but no sockets (`/dev/null`).
//!
//! A test steps the shard as its loop would: it applies commands, completes ops through the
//! fake driver and hands them to [`Shard::complete`] ([`Harness::settle`]), and fires timers at
//! a time of its choosing, so nothing sleeps.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Mode;
use crate::driver::fake::{FakeDriver, FakeState};
use crate::modes::{Plan, Role, Tls};
use crate::sys::fake::{self, Call, Installed, Reply};

/// The one place tests build a [`Forwarder`]: no kTLS, an upstream nothing ever connects to
/// (the fake driver holds the connect). Client mode trusts nobody (no handshake gets that far
/// here); server mode presents a fresh self-signed certificate.
fn forwarder(mode: Mode, max_connections: usize) -> Arc<Forwarder> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let plan = match mode {
        Mode::Client => {
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("default versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("upstream.test").expect("a name");
            Plan::PlainTls {
                tls_on: Role::Dialed,
                tls: Tls::Client {
                    config: Arc::new(config),
                    name,
                },
            }
        }
        Mode::Server => {
            let cert =
                splice_test_pki::Cert::self_signed(&["localhost"], splice_test_pki::KeyType::P256);
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("default versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.der], cert.key.der())
                .expect("a certificate and its key");
            Plan::PlainTls {
                tls_on: Role::Accepted,
                tls: Tls::Server {
                    config: Arc::new(config),
                },
            }
        }
    };
    Arc::new(Forwarder {
        name: "fake".into(),
        upstream: SocketAddr::from(([127, 0, 0, 1], 9)).into(),
        upstream_text: "127.0.0.1:9".into(),
        upstream_name: None,
        plan,
        stats: Arc::default(),
        max_connections,
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(3),
        idle_timeout: None,
        ktls: None,
        cert_not_after: None,
        access_log: false,
        accept_proxy: false,
        send_proxy: None,
    })
}

/// The address the sys fake gives every accepted socket's peer.
const PEER: ([u8; 4], u16) = ([192, 0, 2, 7], 40000);

/// A shard on the fake driver, with the sys fake installed on this thread.
struct Harness {
    shard: Shard,
    driver: Rc<RefCell<FakeState>>,
    tx: mpsc::Sender<Command>,
    sys: Installed,
}

fn harness() -> Harness {
    harness_where(true)
}

/// [`harness`] on a host with IPv6 (`false`: without, so an IPv6 socket is `EAFNOSUPPORT`).
fn harness_where(ipv6: bool) -> Harness {
    let sys = fake::install(move |call| match call {
        Call::PeerAddr(_) => Some(Ok(Reply::Addr(Some(PEER.into())))),
        Call::TcpStream { ipv6: true } if !ipv6 => {
            Some(Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)))
        }
        _ => None,
    });
    let driver = FakeDriver::default();
    let state = driver.0.clone();
    let (tx, rx) = mpsc::channel();
    let wake = Rc::new(fake::null_fd());
    let shard = Shard::new(Driver::Fake(driver), rx, wake, Duration::ZERO);
    Harness {
        shard,
        driver: state,
        tx,
        sys,
    }
}

impl Harness {
    /// Sends `cmd` and lets the shard apply it, as its loop does first in each turn.
    fn command(&mut self, cmd: Command) {
        self.tx.send(cmd).expect("the shard's receiver is alive");
        assert!(!self.shard.commands(), "only Stop stops the shard");
    }

    /// Adds listener `id` (a `/dev/null` fd) for `fwd`; returns its fd number.
    fn listen(&mut self, id: u32, fwd: &Arc<Forwarder>) -> RawFd {
        let fd = fake::null_fd();
        let raw = fd.as_raw_fd();
        self.command(Command::AddListener {
            id,
            fd,
            fwd: fwd.clone(),
        });
        raw
    }

    /// Hands every completion the fake driver has ready to the shard, until none is left.
    fn settle(&mut self) {
        loop {
            let mut done = Vec::new();
            self.shard
                .driver
                .wait(Some(Duration::ZERO), &mut done)
                .expect("the fake never fails");
            if done.is_empty() {
                return;
            }
            for c in done {
                self.shard.complete(c);
            }
        }
    }

    /// Completes listener `id`'s accept with `result` (and a new `/dev/null` "socket" when
    /// it is `Ok`), and lets the shard handle it. Returns the new fd's number.
    fn accept_with(&mut self, id: u32, result: io::Result<usize>) -> Option<RawFd> {
        let sock = result.is_ok().then(fake::null_fd);
        let raw = sock.as_ref().map(|s| s.as_raw_fd());
        self.driver
            .borrow_mut()
            .complete(token(TAG_ACCEPT, id, 0), result, sock);
        self.settle();
        raw
    }

    /// A connection arrives on listener `id`; returns its fd's number.
    fn accept(&mut self, id: u32) -> RawFd {
        self.accept_with(id, Ok(0)).expect("an accepted fd")
    }

    /// Completes the in-flight op with `token` with `result` and lets the shard handle it.
    fn finish(&mut self, token: u64, result: io::Result<usize>) {
        self.driver.borrow_mut().complete(token, result, None);
        self.settle();
    }

    /// Whether an op with `token` is in flight.
    fn has(&self, token: u64) -> bool {
        self.driver.borrow().has(token)
    }

    /// The in-flight ops with `tag`, as (index, generation, op's fd).
    fn ops(&self, tag: u8) -> Vec<(u32, u32, RawFd)> {
        self.driver
            .borrow()
            .in_flight
            .iter()
            .map(|(t, op)| (untoken(*t), op.fd()))
            .filter(|((g, _, _), _)| *g == tag)
            .map(|((_, i, generation), fd)| (i, generation, fd))
            .collect()
    }

    /// The times the timers with `tag` (and `index`) are set for.
    fn timers(&self, tag: u8, index: u32) -> Vec<Instant> {
        let mut v: Vec<_> = self
            .shard
            .timers
            .iter()
            .map(|Reverse((at, t))| (*at, untoken(*t)))
            .filter(|(_, (g, i, _))| *g == tag && *i == index)
            .map(|(at, _)| at)
            .collect();
        v.sort();
        v
    }

    fn calls(&self) -> Vec<Call> {
        self.sys.calls()
    }
}

/// `errors_{downstream,upstream,tls,internal}` of `fwd`.
fn errors(fwd: &Forwarder) -> [u64; 4] {
    let s = &fwd.stats;
    [
        s.errors_downstream.load(Relaxed),
        s.errors_upstream.load(Relaxed),
        s.errors_tls.load(Relaxed),
        s.errors_internal.load(Relaxed),
    ]
}

#[test]
fn an_accepted_connection_connects_to_its_upstream_and_accepts_again() {
    let mut h = harness();
    let fwd = forwarder(Mode::Client, 10);
    let listener = h.listen(7, &fwd);
    assert_eq!(h.ops(TAG_ACCEPT), [(7, 0, listener)]);

    let down = h.accept(7);

    // One connection, in slot 0, first generation, with the peer the socket reported.
    assert_eq!(fwd.stats.accepted.load(Relaxed), 1);
    assert_eq!(fwd.stats.active.load(Relaxed), 1);
    let conn = h.shard.conns[0].as_ref().expect("a connection in slot 0");
    assert_eq!(
        (
            conn.generation,
            conn.socket(Role::Accepted)
                .expect("the accepted socket")
                .as_raw_fd()
        ),
        (1, down)
    );
    // The upstream socket was made through sys (no socket here) and its connect submitted,
    // to the forwarder's upstream, under the connection's token.
    let up = conn
        .socket(Role::Dialed)
        .expect("an upstream socket")
        .as_raw_fd();
    assert!(
        h.calls().contains(&Call::SetNodelay(down)),
        "{:?}",
        h.calls()
    );
    assert!(h.calls().contains(&Call::TcpStream { ipv6: false }));
    assert_eq!(h.ops(TAG_CONNECT), [(0, 1, up)]);
    let state = h.driver.borrow();
    let connect = state
        .in_flight
        .iter()
        .find_map(|(t, op)| match op {
            Op::Connect { addr, .. } if *t == token(TAG_CONNECT, 0, 1) => Some(addr),
            _ => None,
        })
        .expect("the connect op");
    assert_eq!(connect.as_socket(), fwd.upstream.as_socket());
    drop(state);
    // Its accepted leg is watched for a reset; the listener accepts the next connection.
    assert_eq!(h.ops(TAG_HANGUP_PLAIN), [(0, 1, down)]);
    assert_eq!(h.ops(TAG_ACCEPT), [(7, 0, listener)]);
}

#[test]
fn past_max_connections_a_connection_is_reset_and_counted_as_refused() {
    let mut h = harness();
    let fwd = forwarder(Mode::Client, 1);
    h.listen(1, &fwd);
    let first = h.accept(1);
    let second = h.accept(1);

    assert_eq!(fwd.stats.accepted.load(Relaxed), 1);
    assert_eq!(fwd.stats.refused.load(Relaxed), 1);
    assert_eq!(fwd.stats.active.load(Relaxed), 1);
    // The refused socket is reset, never made a connection; the first one is untouched.
    assert!(h.calls().contains(&Call::SetLingerZero(second)));
    assert!(!h.calls().contains(&Call::SetLingerZero(first)));
    assert_eq!(h.shard.live_conns(), 1);
    assert_eq!(h.ops(TAG_CONNECT).len(), 1);
    // And the listener goes on accepting.
    assert_eq!(h.ops(TAG_ACCEPT).len(), 1);
}

#[test]
fn out_of_fds_pauses_accepting_with_a_doubling_backoff() {
    let mut h = harness();
    let fwd = forwarder(Mode::Client, 10);
    h.listen(3, &fwd);
    let emfile = || Err(io::Error::from_raw_os_error(libc::EMFILE));

    let mut pauses = Vec::new();
    for _ in 0..6 {
        let before = Instant::now();
        h.accept_with(3, emfile());
        let after = Instant::now();
        // Paused: no accept in flight, a timer armed to resume it.
        assert!(h.shard.listeners[&3].paused);
        assert!(h.ops(TAG_ACCEPT).is_empty());
        let timers = h.timers(TIMER_ACCEPT, 3);
        let [at] = timers[..] else {
            panic!("one back-off timer: {timers:?}");
        };
        assert!(at >= before && at <= after + ACCEPT_BACKOFF_MAX);
        pauses.push((at - before, at - after));
        // The timer resumes accepting.
        h.shard.fire_timers(at);
        assert!(!h.shard.listeners[&3].paused);
        assert_eq!(h.ops(TAG_ACCEPT).len(), 1);
        assert!(h.timers(TIMER_ACCEPT, 3).is_empty());
    }
    // 100 ms, doubling, up to a second (each pause lies between the times read around it).
    let want = [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis);
    for ((longest, shortest), want) in pauses.iter().zip(want) {
        assert!(*shortest <= want && want <= *longest, "{pauses:?}");
    }
    // An accept that works starts the back-off over.
    h.accept(3);
    assert_eq!(h.shard.listeners[&3].backoff, ACCEPT_BACKOFF);
}

#[test]
fn a_closing_connection_resumes_a_paused_listener_before_its_timer() {
    let mut h = harness();
    let fwd = forwarder(Mode::Client, 10);
    h.listen(3, &fwd);
    h.accept(3);
    h.accept_with(3, Err(io::Error::from_raw_os_error(libc::ENFILE)));
    assert!(h.shard.listeners[&3].paused);
    assert!(h.ops(TAG_ACCEPT).is_empty());

    // The connection's upstream refuses it: it closes, giving back its fds.
    h.finish(
        token(TAG_CONNECT, 0, 1),
        Err(io::Error::from_raw_os_error(libc::ECONNREFUSED)),
    );
    assert_eq!(h.shard.live_conns(), 0);
    assert!(!h.shard.listeners[&3].paused);
    assert_eq!(h.ops(TAG_ACCEPT).len(), 1);
    // The back-off timer still fires later, and finds nothing to resume.
    let [at] = h.timers(TIMER_ACCEPT, 3)[..] else {
        panic!("the back-off timer is still set");
    };
    h.shard.fire_timers(at);
    assert_eq!(h.ops(TAG_ACCEPT).len(), 1);
}

#[test]
fn a_removed_listener_is_cancelled_and_accepts_no_more() {
    let mut h = harness();
    let fwd = forwarder(Mode::Client, 10);
    let kept = h.listen(1, &fwd);
    let removed = h.listen(2, &fwd);
    h.command(Command::RemoveListener { id: 2 });
    assert_eq!(h.driver.borrow().cancelled, [removed]);

    // Its accept comes back cancelled and is not submitted again; the other listener's stays.
    h.settle();
    assert_eq!(h.ops(TAG_ACCEPT), [(1, 0, kept)]);
    assert!(!h.shard.listeners.contains_key(&2));
    // An accept that completed just before the removal is dropped, not made a connection.
    h.shard.complete(Completion {
        token: token(TAG_ACCEPT, 2, 0),
        op: Op::Accept {
            fd: Rc::new(fake::null_fd()),
        },
        result: Ok(0),
        accepted: Some(fake::null_fd()),
    });
    assert_eq!(h.shard.live_conns(), 0);
    assert_eq!(fwd.stats.accepted.load(Relaxed), 0);
    assert_eq!(h.ops(TAG_ACCEPT), [(1, 0, kept)]);
}

#[test]
fn drain_cancels_the_listeners_and_exits_when_no_connection_is_left() {
    let fwd = forwarder(Mode::Client, 10);
    {
        // No connection: the shard exits without waiting for anything.
        let mut h = harness();
        let listener = h.listen(1, &fwd);
        h.tx.send(Command::Drain).expect("send");
        h.shard.run();
        let state = h.driver.borrow();
        assert_eq!(state.cancelled, [listener]);
        assert!(state.waits.is_empty(), "{:?}", state.waits);
    }

    // One connection: the shard runs on until it has ended.
    let mut h = harness();
    let listener = h.listen(1, &fwd);
    let down = h.accept(1);
    let up = h.shard.conns[0]
        .as_ref()
        .and_then(|c| c.socket(Role::Dialed));
    let up = up.expect("an upstream socket").as_raw_fd();
    h.tx.send(Command::Drain).expect("send");
    let waits = Rc::new(RefCell::new(0));
    let seen = waits.clone();
    h.driver.borrow_mut().on_wait = Some(Box::new(move |s: &mut FakeState| {
        *seen.borrow_mut() += 1;
        // The shard waits with its connection open a few times, then the upstream refuses.
        if *seen.borrow() == 3 {
            let refused = Err(io::Error::from_raw_os_error(libc::ECONNREFUSED));
            s.complete(token(TAG_CONNECT, 0, 1), refused, None);
        }
    }));
    h.shard.run();
    assert_eq!(
        *waits.borrow(),
        3,
        "the shard left as soon as its connection ended"
    );
    let state = h.driver.borrow();
    assert_eq!(state.cancelled[0], listener);
    assert!(state.cancelled.contains(&down) && state.cancelled.contains(&up));
    assert_eq!(fwd.stats.active.load(Relaxed), 0);
}

#[test]
fn completions_of_an_older_generation_are_ignored() {
    let mut h = harness();
    let fwd = forwarder(Mode::Client, 10);
    h.listen(1, &fwd);
    h.accept(1);
    let budget = fwd.connect_timeout + fwd.handshake_timeout;
    // The first connection times out; its ops come back cancelled, and are held back here.
    h.shard.fire_timers(Instant::now() + budget);
    assert_eq!(h.shard.live_conns(), 0);
    assert_eq!(errors(&fwd), [0, 1, 0, 0]);
    let stale: Vec<_> = h.driver.borrow_mut().ready.drain(..).collect();
    let stale_tokens: Vec<_> = stale.iter().map(|c| untoken(c.token)).collect();
    assert!(
        stale_tokens.contains(&(TAG_CONNECT, 0, 1)),
        "{stale_tokens:?}"
    );

    // The next connection takes the same slot, one generation on.
    h.accept(1);
    assert_eq!(
        h.ops(TAG_CONNECT)
            .iter()
            .map(|o| (o.0, o.1))
            .collect::<Vec<_>>(),
        [(0, 2)]
    );
    for c in stale {
        h.shard.complete(c);
    }
    // The first connection's failed connect did not touch the second one.
    assert_eq!(h.shard.live_conns(), 1);
    assert_eq!(h.shard.conns[0].as_ref().map(|c| c.generation), Some(2));
    assert_eq!(errors(&fwd), [0, 1, 0, 0]);
    assert!(h.has(token(TAG_CONNECT, 0, 2)));
}

#[test]
fn a_connect_deadline_closes_the_connection_as_an_upstream_failure() {
    let mut h = harness();
    let fwd = forwarder(Mode::Client, 10);
    h.listen(1, &fwd);
    let start = Instant::now();
    let down = h.accept(1);
    let up = h.shard.conns[0]
        .as_ref()
        .and_then(|c| c.socket(Role::Dialed));
    let up = up.expect("an upstream socket").as_raw_fd();
    let deadlines = h.timers(TIMER_DEADLINE, 0);
    let armed = *deadlines.last().expect("a deadline timer");
    assert!(armed >= start + fwd.connect_timeout, "{deadlines:?}");

    // Before the deadline nothing happens.
    h.shard.fire_timers(start);
    assert_eq!(h.shard.live_conns(), 1);
    assert!(h.has(token(TAG_CONNECT, 0, 1)));

    // At it the connection is reset on both legs and counted as an upstream failure.
    h.shard.fire_timers(armed);
    assert_eq!(h.shard.live_conns(), 0);
    assert_eq!(errors(&fwd), [0, 1, 0, 0]);
    assert_eq!(fwd.stats.active.load(Relaxed), 0);
    let calls = h.calls();
    assert!(calls.contains(&Call::SetLingerZero(down)), "{calls:?}");
    assert!(calls.contains(&Call::SetLingerZero(up)), "{calls:?}");
    let cancelled = h.driver.borrow().cancelled.clone();
    assert!(cancelled.contains(&down) && cancelled.contains(&up));
    // Its ops come back cancelled, and nothing new is submitted for it.
    h.settle();
    assert!(h.ops(TAG_CONNECT).is_empty());
    assert!(h.ops(TAG_HANGUP_PLAIN).is_empty());
}

/// The connects in flight: their tokens and addresses, in token order.
fn connects(h: &Harness) -> Vec<(u64, SocketAddr)> {
    let mut v: Vec<_> = h
        .driver
        .borrow()
        .in_flight
        .iter()
        .filter_map(|(t, op)| match op {
            Op::Connect { addr, .. } => Some((*t, addr.as_socket().expect("IP"))),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// An upstream given by name: a refused connect tries the name's next address within the same
/// connection; each failure (refused, or the connect deadline) moves the next connection on
/// and looks the name up again, whose new answer (the upstream moved) is used from then on.
#[test]
fn a_failed_connect_moves_a_named_upstream_on_and_looks_it_up_again() {
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = calls.clone();
    let name = crate::resolve::Name::with_lookup(
        "upstream.test",
        9,
        vec![
            SocketAddr::from(([127, 0, 0, 2], 9)),
            SocketAddr::from(([127, 0, 0, 4], 9)),
        ],
        Arc::new(move |_: &str, port: u16| {
            match seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Err(io::Error::other("no DNS server")),
                _ => Ok(vec![SocketAddr::from(([127, 0, 0, 3], port))]),
            }
        }),
    );
    let mut f = Arc::into_inner(forwarder(Mode::Client, 10)).expect("one owner");
    f.upstream_name = Some(name);
    let fwd = Arc::new(f);
    let mut h = harness();
    h.listen(1, &fwd);
    let wait_lookups = |n: u64| {
        let name = fwd.upstream_name.as_ref().expect("a name");
        let deadline = Instant::now() + Duration::from_secs(10);
        while name.lookups() < n {
            assert!(Instant::now() < deadline, "lookup {n} did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let refused = || Err(io::Error::from_raw_os_error(libc::ECONNREFUSED));
    let (a2, a3, a4) = (
        SocketAddr::from(([127, 0, 0, 2], 9)),
        SocketAddr::from(([127, 0, 0, 3], 9)),
        SocketAddr::from(([127, 0, 0, 4], 9)),
    );

    // Two connections to the first address, both refused: each tries the second in the same
    // connection (a new socket, the old one cancelled), with no error counted. Failing
    // together, they move the forwarder on once: both go to the second address, not back.
    let down = h.accept(1);
    h.accept(1);
    let first = connects(&h);
    assert_eq!(first.iter().map(|c| c.1).collect::<Vec<_>>(), [a2, a2]);
    let first_up = h.shard.conns[0]
        .as_ref()
        .and_then(|c| c.socket(Role::Dialed));
    let first_up = first_up.expect("an upstream socket").as_raw_fd();
    h.finish(first[0].0, refused());
    h.finish(first[1].0, refused());
    assert_eq!(h.shard.live_conns(), 2);
    let second = connects(&h);
    assert_eq!(second.iter().map(|c| c.1).collect::<Vec<_>>(), [a4, a4]);
    assert!(h.driver.borrow().cancelled.contains(&first_up));
    assert_eq!(errors(&fwd), [0, 0, 0, 0]);
    // The lookup failed: the addresses known stay. Refused there too: no address left for
    // these connections, which close as upstream failures.
    wait_lookups(1);
    h.finish(second[0].0, refused());
    h.finish(second[1].0, refused());
    assert_eq!(h.shard.live_conns(), 0);
    assert_eq!(errors(&fwd), [0, 2, 0, 0]);
    assert!(h.calls().contains(&Call::SetLingerZero(down)));
    // That lookup finds the moved upstream; the next connection goes there, and its connect
    // deadline (a failure too) has no other address to try.
    wait_lookups(2);
    h.accept(1);
    let third = connects(&h);
    assert_eq!(third.iter().map(|c| c.1).collect::<Vec<_>>(), [a3]);
    let (_, slot, _) = untoken(third[0].0);
    let deadline = *h.timers(TIMER_DEADLINE, slot).last().expect("a deadline");
    h.shard.fire_timers(deadline);
    h.settle();
    assert_eq!(h.shard.live_conns(), 0);
    assert_eq!(errors(&fwd), [0, 3, 0, 0]);
    wait_lookups(3);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// A named upstream's address that drops SYNs: at the connect deadline the connection dials
/// the name's next address on a new socket (the old connect cancelled, its completion
/// ignored), with no error counted. Connections that timed out together move the forwarder on
/// once, so the next connection starts at the address that answered.
#[test]
fn a_timed_out_connect_dials_a_named_upstreams_next_address() {
    let (a2, a4) = (
        SocketAddr::from(([127, 0, 0, 2], 9)),
        SocketAddr::from(([127, 0, 0, 4], 9)),
    );
    let mut f = Arc::into_inner(forwarder(Mode::Client, 10)).expect("one owner");
    f.upstream_name = Some(crate::resolve::Name::new("silent.test", 9, vec![a2, a4]));
    let fwd = Arc::new(f);
    let mut h = harness();
    h.listen(1, &fwd);
    h.accept(1);
    h.accept(1);
    let first = connects(&h);
    assert_eq!(first.iter().map(|c| c.1).collect::<Vec<_>>(), [a2, a2]);
    let old_up = |h: &Harness, slot: usize| {
        let conn = h.shard.conns[slot].as_ref().expect("open");
        conn.socket(Role::Dialed)
            .expect("an upstream socket")
            .as_raw_fd()
    };
    let olds = [old_up(&h, 0), old_up(&h, 1)];
    let deadline = *h.timers(TIMER_DEADLINE, 1).last().expect("a deadline");
    h.shard.fire_timers(deadline);
    h.settle();
    assert_eq!(h.shard.live_conns(), 2, "no connection is lost");
    assert_eq!(errors(&fwd), [0, 0, 0, 0]);
    let cancelled = h.driver.borrow().cancelled.clone();
    assert!(olds.iter().all(|o| cancelled.contains(o)), "{cancelled:?}");
    let second = connects(&h);
    assert_eq!(second.iter().map(|c| c.1).collect::<Vec<_>>(), [a4, a4]);
    // The new connect answers: the connection goes on to its handshake (the client's hello).
    h.finish(second[0].0, Ok(0));
    assert!(!h.ops(TAG_SEND_TLS).is_empty(), "the handshake starts");
    // Moved on once, not once per connection: the next one starts at the address that answered.
    h.accept(1);
    let third: Vec<_> = connects(&h).into_iter().map(|c| c.1).collect();
    assert_eq!(third, [a4, a4]);
    // A deadline on the last address known: no other to try; the connection fails.
    let deadline = *h.timers(TIMER_DEADLINE, 1).last().expect("a deadline");
    h.shard.fire_timers(deadline);
    h.settle();
    assert_eq!(errors(&fwd)[1], 1, "{:?}", errors(&fwd));
}

/// On a host without IPv6, a named upstream's `::1` cannot have a socket (`EAFNOSUPPORT`):
/// the connection dials the name's next address instead, with no error counted, and the
/// forwarder's later connections start there.
#[test]
fn an_upstream_address_of_a_family_the_host_lacks_is_passed() {
    let (v6, v4) = (
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9)),
        SocketAddr::from(([127, 0, 0, 2], 9)),
    );
    let mut f = Arc::into_inner(forwarder(Mode::Client, 10)).expect("one owner");
    f.upstream_name = Some(crate::resolve::Name::new("both.test", 9, vec![v6, v4]));
    let fwd = Arc::new(f);
    let mut h = harness_where(false);
    h.listen(1, &fwd);
    for _ in 0..2 {
        h.accept(1);
    }
    let connects: Vec<SocketAddr> = h
        .driver
        .borrow()
        .in_flight
        .iter()
        .filter_map(|(_, op)| match op {
            Op::Connect { addr, .. } => addr.as_socket(),
            _ => None,
        })
        .collect();
    assert_eq!(connects, [v4, v4]);
    assert_eq!(h.shard.live_conns(), 2);
    assert_eq!(errors(&fwd), [0, 0, 0, 0]);
    let tried: Vec<bool> = h
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::TcpStream { ipv6 } => Some(*ipv6),
            _ => None,
        })
        .collect();
    assert_eq!(tried, [true, false, false], "::1 once, then never again");
}

#[test]
fn a_wake_up_resets_the_eventfd_and_waits_for_the_next() {
    let mut h = harness();
    let wake = h.shard.wake.as_raw_fd();
    let wake_token = token(TAG_WAKE, 0, 0);
    h.shard.driver.submit(
        wake_token,
        Op::Poll {
            fd: h.shard.wake.clone(),
            write: false,
        },
    );
    h.finish(wake_token, Ok(0));
    assert_eq!(h.calls(), [Call::EventfdDrain(wake)]);
    assert!(h.has(wake_token));
}

#[test]
fn a_handshake_deadline_closes_a_server_connection_as_a_tls_failure() {
    let mut h = harness();
    let fwd = forwarder(Mode::Server, 10);
    h.listen(1, &fwd);
    let start = Instant::now();
    let down = h.accept(1);
    // Server mode: no upstream before the handshake; the accepted (TLS) leg waits for bytes.
    assert!(h.ops(TAG_CONNECT).is_empty());
    assert_eq!(h.ops(TAG_WAIT_TLS), [(0, 1, down)]);
    let [armed] = h.timers(TIMER_DEADLINE, 0)[..] else {
        panic!("one deadline timer");
    };
    assert!(armed >= start + fwd.handshake_timeout);

    h.shard.fire_timers(armed);
    assert_eq!(h.shard.live_conns(), 0);
    assert_eq!(errors(&fwd), [0, 0, 1, 0]);
    assert!(h.calls().contains(&Call::SetLingerZero(down)));
    assert!(h.driver.borrow().cancelled.contains(&down));
}

#[test]
fn a_reset_seen_on_a_watched_leg_closes_the_connection_on_that_side() {
    let mut h = harness();
    let fwd = forwarder(Mode::Client, 10);
    h.listen(1, &fwd);
    let down = h.accept(1);
    // The client's (plain) leg reports an error while the upstream connect is in flight.
    h.finish(token(TAG_HANGUP_PLAIN, 0, 1), Ok(libc::POLLERR as usize));
    assert_eq!(h.shard.live_conns(), 0);
    assert_eq!(errors(&fwd), [1, 0, 0, 0]);
    assert!(h.calls().contains(&Call::SetLingerZero(down)));
    // A FIN alone (POLLRDHUP) is no reset: the state machine reads up to it in order.
    h.accept(1);
    h.finish(token(TAG_HANGUP_PLAIN, 0, 2), Ok(libc::POLLRDHUP as usize));
    assert_eq!(h.shard.live_conns(), 1);
    assert_eq!(errors(&fwd), [1, 0, 0, 0]);
}
