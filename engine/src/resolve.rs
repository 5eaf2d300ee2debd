//! A `HOST:PORT` the engine connects to (an agent's relay, a destination's service target, a
//! forwarder's upstream): looked up again after every lost or failed connection, off the
//! shard; an agent tries every address of the answer in turn, a forwarder moves on to the next
//! for its next connection (at most one lookup a second for a busy forwarder).
//!
//! A relay that moves (a new address behind its name, a fail-over) is found at the next
//! reconnect, and a name with several addresses (`localhost`: `::1` and `127.0.0.1`; a relay
//! behind several A records) is not stuck on a first one that refuses. The lookup
//! (`getaddrinfo`, which may wait seconds for a DNS server) runs on a short-lived thread of
//! its own while the agent waits out its reconnect delay; an attempt uses the latest answer
//! (the one from start-up until a new one came). An IP address is never looked up.
//!
//! A name that does not resolve at start (a device is often up before its network or its DNS)
//! stops nothing: each attempt fails at once, saying why, and the agent retries on its
//! reconnect policy, looking the name up again each time, until an answer comes.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Addresses of a name one connection dials at most, each after the previous one refused or
/// timed out.
pub(crate) const MAX_DIALS: usize = 4;

/// Why a connect failed when its deadline, `timeout` after it started, passed first (the
/// forwarders' and the destinations' words for it).
pub(crate) fn no_connection_within(timeout: Duration) -> String {
    format!("no connection within {timeout:?}")
}

/// How a name is looked up: `getaddrinfo` (a test gives its own).
pub(crate) type Lookup = Arc<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// See the [module documentation](self).
pub(crate) struct Name {
    /// What the name is, for messages: "the relay's name", "the service's target".
    what: &'static str,
    host: String,
    port: u16,
    lookup: Lookup,
    /// At most one lookup this often (none: one after every failure).
    spacing: Option<Duration>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The latest non-empty answer.
    addrs: Mutex<Vec<SocketAddr>>,
    /// Why the latest lookup found nothing, if it did.
    failure: Mutex<Option<String>>,
    /// A lookup is running.
    busy: AtomicBool,
    /// Lookups finished (with an answer or not).
    lookups: AtomicU64,
    /// When the latest lookup started.
    started: Mutex<Option<Instant>>,
    /// Which of the known addresses [`Name::current`] gives (modulo their number).
    cursor: AtomicUsize,
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Name")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("addrs", &self.addrs())
            .finish_non_exhaustive()
    }
}

impl Name {
    /// `host:port`, whose addresses at start-up were `first`.
    pub(crate) fn new(host: &str, port: u16, first: Vec<SocketAddr>) -> Self {
        Self::with_lookup(
            host,
            port,
            first,
            Arc::new(|h: &str, p: u16| Ok((h, p).to_socket_addrs()?.collect())),
        )
    }

    /// [`Name::new`] with its own way of looking the name up.
    pub(crate) fn with_lookup(
        host: &str,
        port: u16,
        first: Vec<SocketAddr>,
        lookup: Lookup,
    ) -> Self {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Self {
            what: "the relay's name",
            host,
            port,
            lookup,
            spacing: None,
            shared: Arc::new(Shared {
                addrs: Mutex::new(first),
                ..Shared::default()
            }),
        }
    }

    /// What the name is, for messages (the relay's name unless told).
    pub(crate) fn called(mut self, what: &'static str) -> Self {
        self.what = what;
        self
    }

    /// At most one lookup per `spacing`, for a name refreshed after every failed connection
    /// of a busy forwarder.
    pub(crate) fn spaced(mut self, spacing: Duration) -> Self {
        self.spacing = Some(spacing);
        self
    }

    /// The address to connect to now: one of those known, the same until [`Name::failed`]
    /// moves past it.
    pub(crate) fn current(&self) -> Option<SocketAddr> {
        let addrs = lock(&self.shared.addrs);
        let i = self.shared.cursor.load(SeqCst);
        addrs.get(i % addrs.len().max(1)).copied()
    }

    /// How many addresses are known now.
    pub(crate) fn known(&self) -> usize {
        lock(&self.shared.addrs).len()
    }

    /// A connect to `addr` failed: move on to the next address known, unless another failure
    /// already moved past it (connections that failed together move it once). `None` (not
    /// known which): move on.
    pub(crate) fn failed(&self, addr: Option<SocketAddr>) {
        let addrs = lock(&self.shared.addrs);
        let i = self.shared.cursor.load(SeqCst);
        if addr.is_none() || addrs.get(i % addrs.len().max(1)) == addr.as_ref() {
            self.shared.cursor.store(i.wrapping_add(1), SeqCst);
        }
    }

    /// Opens a socket (`open`) for the current address. An address of a family this host
    /// lacks (`EAFNOSUPPORT`: `::1` on a kernel without IPv6) counts as failed, and the next
    /// is tried, up to every address known; another error is returned as it is (running out
    /// of fds is not the address's fault). `None`: no address known.
    pub(crate) fn open<T>(
        &self,
        mut open: impl FnMut(SocketAddr) -> io::Result<T>,
    ) -> Option<io::Result<(SocketAddr, T)>> {
        let mut tried = 0;
        loop {
            let addr = self.current()?;
            match open(addr) {
                Err(e) if family_missing(&e) => {
                    self.failed(Some(addr));
                    tried += 1;
                    if tried >= self.known() {
                        return Some(Err(e));
                    }
                }
                r => return Some(r.map(|t| (addr, t))),
            }
        }
    }

    /// Why the name had no address at start (it did not resolve), if it had none.
    pub(crate) fn unresolved(self, why: Option<String>) -> Self {
        *lock(&self.shared.failure) = why;
        self
    }

    /// Why an attempt has no address to try: the name has not resolved since start.
    pub(crate) fn no_address(&self) -> String {
        match lock(&self.shared.failure).as_deref() {
            Some(why) => format!("{} does not resolve: {why}", self.what),
            None => format!("{} resolves to no address", self.what),
        }
    }

    /// Looks the name up again, in the background (nothing if a lookup is running or the host
    /// is an IP address). A failed lookup or an empty answer keeps the addresses known.
    pub(crate) fn refresh(&self) {
        if self.host.parse::<IpAddr>().is_ok() {
            return;
        }
        if let Some(spacing) = self.spacing {
            let mut started = lock(&self.shared.started);
            let now = Instant::now();
            if started.is_some_and(|t| now.saturating_duration_since(t) < spacing) {
                return;
            }
            *started = Some(now);
        }
        if self.shared.busy.swap(true, SeqCst) {
            return;
        }
        let (what, host, port, lookup, shared) = (
            self.what,
            self.host.clone(),
            self.port,
            self.lookup.clone(),
            self.shared.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("name-lookup".into())
            .spawn(move || {
                let failure = match lookup(&host, port) {
                    Ok(found) if !found.is_empty() => {
                        *lock(&shared.addrs) = found;
                        None
                    }
                    Ok(_) => Some("it resolves to no address".to_string()),
                    Err(e) => Some(e.to_string()),
                };
                // With no address known, the next attempt fails and says why (this `failure`).
                if let Some(why) = &failure
                    && !lock(&shared.addrs).is_empty()
                {
                    tracing::warn!(name = %host, error = %why, "cannot resolve {what}; trying the addresses known");
                }
                *lock(&shared.failure) = failure;
                shared.busy.store(false, SeqCst);
                shared.lookups.fetch_add(1, SeqCst);
            });
        if spawned.is_err() {
            self.shared.busy.store(false, SeqCst);
        }
    }

    /// The addresses known now, to try in order.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        lock(&self.shared.addrs).clone()
    }

    /// A connection attempt: every address known now, in turn.
    pub(crate) fn attempt(&self) -> Attempt {
        Attempt {
            addrs: self.addrs(),
            next: 0,
        }
    }

    /// Lookups finished since start-up.
    #[cfg(test)]
    pub(crate) fn lookups(&self) -> u64 {
        self.shared.lookups.load(SeqCst)
    }
}

/// Looks `host:port` up now (blocking: at start, never on a shard): its addresses, and why
/// there are none when there are none.
pub(crate) fn look_up(host: &str, port: u16) -> (Vec<SocketAddr>, Option<String>) {
    match (host, port).to_socket_addrs() {
        Ok(found) => {
            let found: Vec<SocketAddr> = found.collect();
            let why = found
                .is_empty()
                .then(|| "it resolves to no address".to_string());
            (found, why)
        }
        Err(e) => (Vec::new(), Some(e.to_string())),
    }
}

/// Whether a socket could not be made because this host lacks the address's family.
fn family_missing(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection attempt's addresses: the next is tried when one refuses.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    addrs: Vec<SocketAddr>,
    next: usize,
}

impl Attempt {
    /// The address to connect to next, if one is left.
    pub(crate) fn next_addr(&mut self) -> Option<SocketAddr> {
        let a = self.addrs.get(self.next).copied();
        self.next += 1;
        a
    }

    /// [`Attempt::next_addr`] with a socket opened for it (`open`), going past addresses of
    /// a family this host lacks, as [`Name::open`] does. `None`: no address left.
    pub(crate) fn open_next<T>(
        &mut self,
        mut open: impl FnMut(SocketAddr) -> io::Result<T>,
    ) -> Option<io::Result<(SocketAddr, T)>> {
        let mut missing = None;
        while let Some(addr) = self.next_addr() {
            match open(addr) {
                Err(e) if family_missing(&e) => missing = Some(e),
                r => return Some(r.map(|t| (addr, t))),
            }
        }
        missing.map(Err)
    }

    /// Whether an address is left after the one being tried.
    pub(crate) fn has_next(&self) -> bool {
        self.next < self.addrs.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits (up to 10 s) until `name` has finished `n` lookups.
    fn wait_lookups(name: &Name, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while name.lookups() < n {
            assert!(
                Instant::now() < deadline,
                "{} lookups, not {n}",
                name.lookups()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A name whose answer is `::1` then `127.0.0.1`, with a listener on `127.0.0.1` only: the
    /// first address refuses (or is not there at all without IPv6) and the attempt goes on to
    /// the next, which connects.
    #[test]
    fn an_attempt_tries_every_address_in_turn() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let both = vec![
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ];
        let answer = both.clone();
        let name = Name::with_lookup(
            "relay.test",
            port,
            vec![],
            Arc::new(move |_: &str, _: u16| Ok(answer.clone())),
        );
        name.refresh();
        wait_lookups(&name, 1);
        let mut attempt = name.attempt();
        let mut tried = Vec::new();
        let connected = loop {
            let Some(addr) = attempt.next_addr() else {
                break None;
            };
            tried.push(addr);
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                break Some(s);
            }
            assert!(attempt.has_next(), "{addr} refused and nothing left");
        };
        assert!(connected.is_some(), "tried {tried:?}");
        assert_eq!(tried, both);
        assert!(!attempt.has_next());
    }

    /// A socket is opened for the current address; one of a family this host lacks
    /// (`EAFNOSUPPORT`) is passed, and the name's cursor moves past it for good, while any other
    /// error is the caller's, with the cursor left where it was. An attempt passes such
    /// addresses the same way.
    #[test]
    fn an_address_of_a_missing_family_is_passed() {
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 9));
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let no_ipv6 = |a: SocketAddr| -> io::Result<SocketAddr> {
            match a {
                SocketAddr::V6(_) => Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
                SocketAddr::V4(_) => Ok(a),
            }
        };
        let name = Name::new("both.test", 9, vec![v6, v4]);
        let (addr, opened) = name.open(no_ipv6).expect("known").expect("opened");
        assert_eq!((addr, opened), (v4, v4));
        assert_eq!(name.current(), Some(v4), "the cursor moved past ::1");
        // Out of fds: not the address's fault.
        let e = name
            .open(|_| -> io::Result<()> { Err(io::Error::from_raw_os_error(libc::EMFILE)) })
            .expect("known")
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
        assert_eq!(name.current(), Some(v4));
        // Nothing this host can open: the family's error, after trying each once.
        let only_v6 = Name::new("v6.test", 9, vec![v6]);
        let mut tries = 0;
        let e = only_v6
            .open(|a| {
                tries += 1;
                no_ipv6(a)
            })
            .expect("known")
            .unwrap_err();
        assert_eq!((e.raw_os_error(), tries), (Some(libc::EAFNOSUPPORT), 1));
        assert!(Name::new("none.test", 9, vec![]).open(no_ipv6).is_none());

        let mut attempt = Name::new("both.test", 9, vec![v6, v4]).attempt();
        let (addr, _) = attempt.open_next(no_ipv6).expect("left").expect("opened");
        assert_eq!(addr, v4);
        assert!(!attempt.has_next());
        let mut v6_only = only_v6.attempt();
        let e = v6_only.open_next(no_ipv6).expect("tried").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAFNOSUPPORT));
        assert!(v6_only.open_next(no_ipv6).is_none(), "none left");
    }

    /// Each refresh looks the name up again (the relay moved: the next attempt has its new
    /// address); a failed or empty lookup keeps what was known; an IP address is not looked up.
    #[test]
    fn each_refresh_looks_the_name_up_again() {
        let calls = Arc::new(AtomicU64::new(0));
        let seen = calls.clone();
        let name = Name::with_lookup(
            "relay.test",
            7000,
            vec![SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 7000))],
            Arc::new(move |host: &str, port: u16| {
                assert_eq!((host, port), ("relay.test", 7000));
                match seen.fetch_add(1, SeqCst) {
                    0 => Ok(vec![SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port))]),
                    1 => Err(io::Error::other("no DNS server")),
                    2 => Ok(vec![]),
                    _ => Ok(vec![SocketAddr::from((Ipv6Addr::LOCALHOST, port))]),
                }
            }),
        );
        let first = |n: &Name| n.attempt().next_addr().unwrap().ip().to_string();
        assert_eq!(first(&name), "127.0.0.1");
        for (n, want) in [
            (1, "127.0.0.2"),
            (2, "127.0.0.2"),
            (3, "127.0.0.2"),
            (4, "::1"),
        ] {
            name.refresh();
            wait_lookups(&name, n);
            assert_eq!(first(&name), want, "after lookup {n}");
        }
        assert_eq!(calls.load(SeqCst), 4);

        // A name that did not resolve at start: attempts say why, until a lookup finds it.
        let seen = Arc::new(AtomicU64::new(0));
        let late = Name::with_lookup(
            "relay.test",
            7000,
            vec![],
            Arc::new(move |_: &str, port: u16| match seen.fetch_add(1, SeqCst) {
                0 => Err(io::Error::other("DNS is not up yet")),
                _ => Ok(vec![SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), port))]),
            }),
        )
        .unresolved(Some("no network yet".into()));
        assert!(late.attempt().next_addr().is_none());
        assert_eq!(
            late.no_address(),
            "the relay's name does not resolve: no network yet"
        );
        late.refresh();
        wait_lookups(&late, 1);
        assert!(late.attempt().next_addr().is_none());
        assert!(late.no_address().ends_with(": DNS is not up yet"));
        late.refresh();
        wait_lookups(&late, 2);
        assert_eq!(first(&late), "127.0.0.3");

        let literal = Name::with_lookup(
            "[::1]",
            7000,
            vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 7000))],
            Arc::new(|_: &str, _: u16| panic!("an IP address is not looked up")),
        );
        literal.refresh();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(literal.lookups(), 0);
    }
}
