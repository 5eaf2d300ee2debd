//! What an agent shows outside its shard: its state (for `Engine::agent_state` and for the
//! `source` / `destination` commands, which exit when their agent gives up) and its counters
//! (for `/metrics`).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::shard::tunnel::exposition::{header, sample};

/// Where a source or destination agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentState {
    /// Connecting to the relay for the first time.
    Connecting,
    /// Lost the tunnel connection (or failed to make it) and waiting to retry, or retrying:
    /// the agent reconnects by itself.
    Reconnecting,
    /// The relay accepted the upgrade: the tunnel connection is up.
    Connected,
    /// Gave up: the tunnel was closed, the relay refused what retrying cannot fix (a 4xx),
    /// or the configuration does not fit the tunnel. The text says which; it never holds a
    /// token.
    Finished(String),
    /// The engine stopped it.
    Stopped,
}

/// Counters of one service of an agent.
#[derive(Debug, Default)]
pub(crate) struct ServiceStats {
    /// Bytes read from local connections and sent into the tunnel.
    pub to_tunnel: AtomicU64,
    /// Bytes from the tunnel written to local connections.
    pub from_tunnel: AtomicU64,
    /// Local connections begun (accepted by a source, dialed by a destination).
    pub connections: AtomicU64,
    /// Local connections open now.
    pub active: AtomicU64,
    /// Local connections refused or failed (a source's service not served or busy, a
    /// destination's target unreachable).
    pub failed: AtomicU64,
    /// Where the kernel counts its local sockets' bytes (eBPF accounting, docs/ebpf.md).
    pub(crate) kernel: std::sync::OnceLock<crate::accounting::Slots>,
    /// Local connections refused because the service had `connections_per_service` open (a
    /// source's accepts, a destination's `CONNECTION_START`s).
    pub over_limit: AtomicU64,
}

/// The shortest time between two warnings about connections refused at the limit.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// An agent's state and counters, shared by its shard and the control thread.
#[derive(Debug)]
pub(crate) struct AgentShared {
    pub name: String,
    /// `source` or `destination`.
    pub kind: &'static str,
    pub services: Vec<(String, ServiceStats)>,
    /// Tunnel connections made (the 101 arrived).
    pub tunnel_connects: AtomicU64,
    /// Tunnel connections lost or attempts failed, each followed by a retry.
    pub reconnects: AtomicU64,
    /// When the last warning about the connection limit was logged, and the refusals
    /// counted since.
    over_limit_warned: Mutex<(Option<std::time::Instant>, u64)>,
    state: Mutex<AgentState>,
    changed: Condvar,
    /// A standby agent's agents, one per pushed tunnel, while they run (shown in `/metrics`
    /// beside it).
    children: Mutex<Vec<std::sync::Arc<AgentShared>>>,
}

impl AgentShared {
    pub fn new(name: String, kind: &'static str, services: &[&str]) -> Self {
        AgentShared {
            name,
            kind,
            services: services
                .iter()
                .map(|s| (s.to_string(), ServiceStats::default()))
                .collect(),
            tunnel_connects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            over_limit_warned: Mutex::new((None, 0)),
            state: Mutex::new(AgentState::Connecting),
            changed: Condvar::new(),
            children: Mutex::new(Vec::new()),
        }
    }

    /// A standby agent started `child` (for a pushed tunnel); those that ended are forgotten.
    pub fn add_child(&self, child: std::sync::Arc<AgentShared>) {
        let mut c = self.children.lock().expect("agent children lock");
        c.retain(|a| !matches!(a.state(), AgentState::Finished(_) | AgentState::Stopped));
        c.push(child);
    }

    /// This agent and the children it runs now.
    fn with_children(self: &std::sync::Arc<Self>) -> Vec<std::sync::Arc<AgentShared>> {
        let mut all = vec![self.clone()];
        all.extend(
            (self.children.lock().expect("agent children lock").iter())
                .filter(|a| !matches!(a.state(), AgentState::Finished(_) | AgentState::Stopped))
                .cloned(),
        );
        all
    }

    pub fn state(&self) -> AgentState {
        self.state.lock().expect("agent state lock").clone()
    }

    /// Sets the state; a finished or stopped agent stays so.
    pub fn set_state(&self, state: AgentState) {
        let mut s = self.state.lock().expect("agent state lock");
        if matches!(*s, AgentState::Finished(_) | AgentState::Stopped) {
            return;
        }
        *s = state;
        self.changed.notify_all();
    }

    /// Waits until the agent is finished or stopped, or `timeout` passes; returns its state.
    pub fn wait_finished(&self, timeout: Duration) -> AgentState {
        let s = self.state.lock().expect("agent state lock");
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| {
                !matches!(s, AgentState::Finished(_) | AgentState::Stopped)
            })
            .expect("agent state lock");
        s.clone()
    }

    pub fn service(&self, index: usize) -> &ServiceStats {
        &self.services[index].1
    }

    /// Counts `n` connections of service `index` refused at the limit; `Some(refusals since
    /// the last warning)` when a warning is due (the first, then at most every
    /// [`WARN_EVERY`]).
    pub fn over_limit(&self, index: usize, n: u64) -> Option<u64> {
        self.service(index).over_limit.fetch_add(n, Relaxed);
        let mut w = self.over_limit_warned.lock().expect("agent warn lock");
        w.1 += n;
        let now = std::time::Instant::now();
        if w.0.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return None;
        }
        let total = std::mem::take(&mut w.1);
        w.0 = Some(now);
        Some(total)
    }
}

/// `splice_agent_kernel_bytes_total`: what the kernel counted on each service's local sockets
/// (eBPF accounting; no series while it does not run). A source's are the connections it
/// accepted, a destination's those it dialed.
fn render_kernel(out: &mut String, agents: &[std::sync::Arc<AgentShared>]) {
    let rows: Vec<_> = agents
        .iter()
        .flat_map(|a| a.services.iter().map(move |(s, st)| (a, s, st)))
        .filter_map(|(a, s, st)| st.kernel.get().map(|k| (a, s, k.bytes())))
        .collect();
    if rows.is_empty() {
        return;
    }
    let name = "splice_agent_kernel_bytes_total";
    header(
        out,
        name,
        "counter",
        "TCP payload bytes the kernel counted on an agent's local sockets (eBPF accounting), \
         received (in) and sent and acknowledged (out).",
    );
    for (a, service, k) in rows {
        for (dir, v) in [
            ("in", k.downstream_in + k.upstream_in),
            ("out", k.downstream_out + k.upstream_out),
        ] {
            let labels = [
                ("agent", a.name.as_str()),
                ("kind", a.kind),
                ("service", service.as_str()),
                ("direction", dir),
            ];
            sample(out, name, &labels, v);
        }
    }
}

/// The agents' counters in the Prometheus text format.
pub(crate) fn render(agents: &[std::sync::Arc<AgentShared>]) -> String {
    let mut text = String::new();
    if agents.is_empty() {
        return text;
    }
    let all: Vec<_> = agents.iter().flat_map(AgentShared::with_children).collect();
    let agents = &all[..];
    let out = &mut text;
    let name = "splice_agent_bytes_total";
    header(
        out,
        name,
        "counter",
        "Bytes an agent moved, by service and direction (to_tunnel: read from local \
         connections; from_tunnel: written to them).",
    );
    for a in agents {
        for (service, s) in &a.services {
            for (dir, n) in [("to_tunnel", &s.to_tunnel), ("from_tunnel", &s.from_tunnel)] {
                let labels = [
                    ("agent", a.name.as_str()),
                    ("kind", a.kind),
                    ("service", service),
                    ("direction", dir),
                ];
                sample(out, name, &labels, n.load(Relaxed));
            }
        }
    }
    type Get = fn(&ServiceStats) -> u64;
    let per_service: [(&str, &str, &str, Get); 4] = [
        (
            "splice_agent_connections_total",
            "counter",
            "Local connections an agent began (accepted by a source, dialed by a destination).",
            |s| s.connections.load(Relaxed),
        ),
        (
            "splice_agent_connections_active",
            "gauge",
            "Local connections of an agent open now.",
            |s| s.active.load(Relaxed),
        ),
        (
            "splice_agent_connections_failed_total",
            "counter",
            "Local connections an agent refused or could not make.",
            |s| s.failed.load(Relaxed),
        ),
        (
            "splice_agent_connections_over_limit_total",
            "counter",
            "Local connections refused because their service had connections_per_service \
             open (a source's accepts, a destination's CONNECTION_STARTs).",
            |s| s.over_limit.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in per_service {
        header(out, name, kind, help);
        for a in agents {
            for (service, s) in &a.services {
                let labels = [
                    ("agent", a.name.as_str()),
                    ("kind", a.kind),
                    ("service", service),
                ];
                sample(out, name, &labels, get(s));
            }
        }
    }
    render_kernel(out, agents);
    type GetA = fn(&AgentShared) -> u64;
    let per_agent: [(&str, &str, &str, GetA); 3] = [
        (
            "splice_agent_tunnel_connects_total",
            "counter",
            "Tunnel connections an agent made to its relay (upgrade accepted).",
            |a| a.tunnel_connects.load(Relaxed),
        ),
        (
            "splice_agent_tunnel_reconnects_total",
            "counter",
            "Tunnel connections an agent lost or could not make, each followed by a retry.",
            |a| a.reconnects.load(Relaxed),
        ),
        (
            "splice_agent_tunnel_up",
            "gauge",
            "1 while an agent's tunnel connection is up.",
            |a| u64::from(a.state() == AgentState::Connected),
        ),
    ];
    for (name, kind, help, get) in per_agent {
        header(out, name, kind, help);
        for a in agents {
            sample(out, name, &[("agent", &a.name), ("kind", a.kind)], get(a));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn renders_per_service_and_direction() {
        let a = Arc::new(AgentShared::new("src".into(), "source", &["ssh", "web"]));
        a.service(1).to_tunnel.store(7, Relaxed);
        a.service(1).from_tunnel.store(9, Relaxed);
        a.reconnects.store(2, Relaxed);
        a.set_state(AgentState::Connected);
        let text = render(std::slice::from_ref(&a));
        for line in [
            "splice_agent_bytes_total{agent=\"src\",kind=\"source\",service=\"web\",direction=\"to_tunnel\"} 7",
            "splice_agent_bytes_total{agent=\"src\",kind=\"source\",service=\"web\",direction=\"from_tunnel\"} 9",
            "splice_agent_tunnel_reconnects_total{agent=\"src\",kind=\"source\"} 2",
            "splice_agent_tunnel_up{agent=\"src\",kind=\"source\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert_eq!(text.matches("# TYPE splice_agent_bytes_total").count(), 1);
        a.set_state(AgentState::Finished("closed".into()));
        a.set_state(AgentState::Connecting);
        assert_eq!(a.state(), AgentState::Finished("closed".into()));
        assert_eq!(
            a.wait_finished(Duration::ZERO),
            AgentState::Finished("closed".into())
        );
    }
}
