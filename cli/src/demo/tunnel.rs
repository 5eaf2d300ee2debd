//! `splice-engine demo tunnel`: the tunnel on loopback with no setup, through the library's API.
//!
//! It starts a relay (a `:memory:` registry, throwaway certificates), opens a tunnel through
//! the relay's API, starts a destination agent in front of an echo backend and a source agent,
//! pushes random bytes through `source -> relay -> destination -> echo` and back on a few
//! connections, checks every byte that comes back, and reports what ran where and the
//! commands that do the same by hand.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use splice_engine::{
    AgentState, DestinationConfig, Engine, EngineConfig, RelayConfig, SourceConfig, TunnelApi,
};

use super::{DemoCerts, echo_backend, push_all};

/// The service the demo's tunnel carries.
const SERVICE: &str = "echo";

/// How long the agents get to reach the relay.
const CONNECT_WITHIN: Duration = Duration::from_secs(15);

/// Runs the tunnel demo and returns the report to print.
pub(crate) fn run(cfg: EngineConfig, bytes: u64, connections: usize) -> Result<String> {
    let certs = DemoCerts::create()?;
    let echo = echo_backend()?;
    let connections = connections.max(1);

    let mut relay_cfg = cfg.clone();
    relay_cfg.relays = vec![
        RelayConfig::new("127.0.0.1:0", &certs.cert, &certs.key, "127.0.0.1:0")
            .name("demo-relay")
            .state(":memory:"),
    ];
    let relay = Engine::start(relay_cfg).context("start the relay")?;
    let relay_addr = relay.relay_addr("demo-relay").expect("just started");
    let api_addr = relay.relay_api_addr("demo-relay").expect("just started");
    let api = TunnelApi::new(&format!("http://{api_addr}"))?;
    let tunnel = api
        .open(&[SERVICE], None, None, Some("splice-engine demo tunnel"))
        .context("open a tunnel through the API")?;
    let (Some(source_token), Some(destination_token)) = (&tunnel.source, &tunnel.destination)
    else {
        bail!("the relay's answer to open lacks an access token");
    };
    // The relay's certificate names localhost: the agents dial it by that name.
    let relay_host = format!("localhost:{}", relay_addr.port());

    let mut dest_cfg = cfg.clone();
    dest_cfg.destinations = vec![
        DestinationConfig::new(&relay_host)
            .name("demo-destination")
            .ca(&certs.ca)
            .token(token_text(destination_token))
            .service(SERVICE, format!("127.0.0.1:{echo}")),
    ];
    let destination = Engine::start(dest_cfg).context("start the destination")?;
    let mut source_cfg = cfg;
    source_cfg.sources = vec![
        SourceConfig::new(&relay_host)
            .name("demo-source")
            .ca(&certs.ca)
            .token(token_text(source_token))
            .service(SERVICE, "127.0.0.1:0"),
    ];
    let source = Engine::start(source_cfg).context("start the source")?;
    let source_addr = source
        .source_addr("demo-source", SERVICE)
        .expect("just started");
    wait_connected(&[(&source, "demo-source"), (&destination, "demo-destination")])?;
    // Both connected to the relay; the source accepts once the relay has paired them and sent
    // the services, which the API shows as both sides connected.
    wait_paired(&api, &tunnel.id)?;

    let per_conn = bytes / connections as u64;
    let pushed = push_all(source_addr, per_conn, connections, false);
    let described = api.describe(&tunnel.id).ok();

    let total = per_conn * connections as u64;
    let mut out = String::new();
    let _ = writeln!(out, "splice-engine demo tunnel");
    let _ = writeln!(
        out,
        "  relay       : agents on {relay_addr} (TLS + WebSocket), API at http://{api_addr}, registry :memory:"
    );
    let _ = writeln!(
        out,
        "  tunnel      : {} with service {SERVICE:?}, opened through the API",
        tunnel.id
    );
    let _ = writeln!(
        out,
        "  path        : you -> source {source_addr} -> relay -> destination -> echo 127.0.0.1:{echo}"
    );
    let _ = writeln!(
        out,
        "  driver      : {}    (three engines in this process: relay, destination, source)",
        relay.driver()
    );
    pushed.report(&mut out, total, connections, 12);
    if let Some(bytes) = described
        .as_ref()
        .map(|d| &d["tunnel"]["bytes"])
        .filter(|b| b.is_object())
    {
        let _ = writeln!(
            out,
            "  relay saw   : {} B source->destination, {} B destination->source",
            bytes["sourceToDestination"], bytes["destinationToSource"]
        );
    }
    let _ = writeln!(
        out,
        "  by hand (tokens go through files, never the command line), in an empty directory:"
    );
    let _ = writeln!(
        out,
        "    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout relay-key.pem -out relay.pem"
    );
    let _ = writeln!(
        out,
        "    socat TCP-LISTEN:{echo},bind=127.0.0.1,fork,reuseaddr EXEC:cat &   # the echo service"
    );
    let _ = writeln!(
        out,
        "    splice-engine relay --listen {relay_addr} --cert relay.pem --key relay-key.pem --api {api_addr} --state :memory: &"
    );
    let _ = writeln!(
        out,
        "    splice-engine tunnel open --api http://{api_addr} --service {SERVICE} --source-token-file source.token --destination-token-file dest.token"
    );
    let _ = writeln!(
        out,
        "    splice-engine destination --relay {relay_host} --ca relay.pem --token-file dest.token --connect {SERVICE}=127.0.0.1:{echo} &"
    );
    let _ = writeln!(
        out,
        "    splice-engine source --relay {relay_host} --ca relay.pem --token-file source.token --listen {SERVICE}={source_addr} &"
    );
    // The agents first: closing the tunnel under them would make them log that they gave up.
    source.shutdown(Duration::ZERO);
    destination.shutdown(Duration::ZERO);
    let _ = api.close(&tunnel.id, false);
    relay.shutdown(Duration::from_secs(1));
    if !pushed.failures.is_empty() {
        bail!(
            "demo tunnel failed: {}: data did not come back intact",
            pushed.failures.join("; ")
        );
    }
    Ok(out)
}

/// The token's text, for an agent's table.
fn token_text(t: &splice_engine::SecretText) -> String {
    t.0.clone()
}

/// Waits until every agent is connected to the relay; an agent that gives up is an error.
fn wait_connected(agents: &[(&Engine, &str)]) -> Result<()> {
    let end = Instant::now() + CONNECT_WITHIN;
    for (engine, name) in agents {
        loop {
            match engine.agent_state(name) {
                Some(AgentState::Connected) => break,
                Some(AgentState::Finished(why)) => bail!("{name} gave up: {why}"),
                _ if Instant::now() >= end => bail!("{name} did not reach the relay in time"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    Ok(())
}

/// Waits until the relay's API shows both sides of `id` connected.
fn wait_paired(api: &TunnelApi, id: &str) -> Result<()> {
    let end = Instant::now() + CONNECT_WITHIN;
    loop {
        let t = api.describe(id)?;
        let connected = |side: &str| t["tunnel"][side]["status"].as_str() == Some("CONNECTED");
        if connected("sourceConnectionState") && connected("destinationConnectionState") {
            // A connection made before SERVICE_IDS reaches the source waits in its
            // listener's backlog: the source accepts it once the service is known.
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("the relay did not pair the agents in time: {t}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
