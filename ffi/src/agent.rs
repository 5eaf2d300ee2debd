//! Tunnel agents (a source or a destination, each its own engine) and the relay's tunnel API.

use std::ffi::{CString, c_char};
use std::time::Duration;

use splice_engine::{
    AgentState, DestinationConfig, Engine, EngineConfig, RotateSide, SecretText, SourceConfig,
    TunnelApi, split_service,
};

use crate::boundary::{
    entry, opt_str_arg, put_box, ref_arg, str_arg, str_list_arg, take_box, write_out,
};
use crate::engine::pin_list;
use crate::error::{Failure, tunnel_result};

/// A source agent: local listeners whose connections go into the tunnel.
pub const TUNNEL_AGENT_SOURCE: u32 = 0;
/// A destination agent: the tunnel's streams go out to local targets.
pub const TUNNEL_AGENT_DESTINATION: u32 = 1;

/// Connecting to the relay for the first time.
pub const TUNNEL_AGENT_CONNECTING: u32 = 0;
/// The relay accepted the agent: the tunnel connection is up.
pub const TUNNEL_AGENT_CONNECTED: u32 = 1;
/// Gave up (the tunnel was closed, the relay refused the token, the services do not fit);
/// the reason says which.
pub const TUNNEL_AGENT_FINISHED: u32 = 2;
/// Stopped by `tunnel_agent_stop`.
pub const TUNNEL_AGENT_STOPPED: u32 = 3;
/// Lost the tunnel connection (or failed to make it) and waiting to retry, or retrying: the
/// agent reconnects by itself.
pub const TUNNEL_AGENT_RECONNECTING: u32 = 4;

/// `tunnel_api_rotate`: replace the source's access token.
pub const TUNNEL_ROTATE_SOURCE: u32 = 0;
/// `tunnel_api_rotate`: replace the destination's access token.
pub const TUNNEL_ROTATE_DESTINATION: u32 = 1;
/// `tunnel_api_rotate`: replace both access tokens.
pub const TUNNEL_ROTATE_BOTH: u32 = 2;

/// The name each agent's engine gives its one agent.
const NAME: &str = "agent";

/// A running tunnel agent (its own engine with one source or destination). Owned by the
/// program until `tunnel_agent_free`. Every call on it is thread-safe, except
/// `tunnel_agent_free`, which must come after every other thread's last call.
pub struct tunnel_agent(crate::engine::tunnel_engine);

/// A tunnel agent's settings. Strings are NUL-terminated UTF-8, borrowed for the call only;
/// NULL or `""` leaves an optional one unset. Zero the struct before setting fields.
#[repr(C)]
pub struct tunnel_agent_opts {
    /// `TUNNEL_AGENT_SOURCE` or `TUNNEL_AGENT_DESTINATION`.
    pub kind: u32,
    /// The relay's agent endpoint, `HOST:PORT` (required).
    pub relay: *const c_char,
    /// CA file (PEM) to verify the relay with (default: the system roots); excludes
    /// `ca_pem`.
    pub ca: *const c_char,
    /// The name to send (SNI) and verify (default: the host of `relay`).
    pub sni: *const c_char,
    /// The tunnel's access token for this side (from `tunnel_api_open`); or `token_file`.
    /// With neither, the token comes from the environment variable
    /// `AWSIOT_TUNNEL_ACCESS_TOKEN`, as for the AWS local proxy.
    pub token: *const c_char,
    /// The client token the access token was bound to (`tunnel_api_rotate`), if any.
    pub client_token: *const c_char,
    /// `services_len` services, each `NAME=ADDR`: a source listens on `ADDR` (`IP:PORT`,
    /// port 0 picks one: see `tunnel_agent_local_port`), a destination connects to `ADDR`
    /// (`HOST:PORT`). A bare `ADDR` is the one unnamed service of a V1 tunnel.
    pub services: *const *const c_char,
    /// How many `services` there are (at least 1).
    pub services_len: usize,
    /// CA certificates (PEM text) to verify the relay with, instead of a file in `ca`.
    pub ca_pem: *const c_char,
    /// Trust a relay whose key (or whole certificate) has one of these hashes,
    /// comma-separated, each `sha256:<base64 or hex>`, instead of a CA (not with `ca` or
    /// `ca_pem`); names and dates are not checked. For a self-signed relay.
    pub pin: *const c_char,
    /// A file holding the client token, instead of `client_token` (not both), so that the
    /// token need not be in the program or its arguments.
    pub client_token_file: *const c_char,
    /// A file holding the access token, instead of `token` (not both).
    pub token_file: *const c_char,
}

fn agent_config(o: &tunnel_agent_opts) -> Result<EngineConfig, Failure> {
    let relay = str_arg(o.relay, "relay")?;
    let token = opt_str_arg(o.token, "token")?;
    let token_file = opt_str_arg(o.token_file, "token_file")?;
    let services = str_list_arg(o.services, o.services_len, "services")?;
    let mut cfg = EngineConfig::default();
    macro_rules! common {
        ($c:expr) => {{
            let mut c = $c.name(NAME);
            if let Some(t) = token {
                c = c.token(t);
            }
            if let Some(f) = token_file {
                c = c.token_file(f);
            }
            if let Some(ca) = opt_str_arg(o.ca, "ca")? {
                c = c.ca(ca);
            }
            if let Some(pem) = opt_str_arg(o.ca_pem, "ca_pem")? {
                c = c.ca_pem(pem);
            }
            if let Some(sni) = opt_str_arg(o.sni, "sni")? {
                c = c.sni(sni);
            }
            if let Some(t) = opt_str_arg(o.client_token, "client_token")? {
                c = c.client_token(t);
            }
            if let Some(f) = opt_str_arg(o.client_token_file, "client_token_file")? {
                c = c.client_token_file(f);
            }
            for p in pin_list(opt_str_arg(o.pin, "pin")?) {
                c = c.pin(p);
            }
            for s in &services {
                let (name, addr) = split_service(s);
                c = c.service(name, addr);
            }
            c
        }};
    }
    match o.kind {
        TUNNEL_AGENT_SOURCE => cfg.sources.push(common!(SourceConfig::new(relay))),
        TUNNEL_AGENT_DESTINATION => cfg
            .destinations
            .push(common!(DestinationConfig::new(relay))),
        k => {
            return Err(Failure::new(
                tunnel_result::TUNNEL_ERR_INVALID_ARGUMENT,
                format!(
                    "kind {k} is neither TUNNEL_AGENT_SOURCE (0) nor TUNNEL_AGENT_DESTINATION (1)"
                ),
            ));
        }
    }
    // One shard is plenty for one agent.
    cfg.threads = Some(1);
    cfg.validate("agent options")?;
    Ok(cfg)
}

/// Starts a tunnel agent in `*out`: checks the options, loads the CA, binds a source's
/// listeners and starts connecting to the relay (in the background: a wrong token or an
/// unreachable relay shows in `tunnel_agent_state`, not here). Thread-safe. Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_INVALID_ARGUMENT`, `TUNNEL_ERR_CONFIG` (the
/// message names the option), `TUNNEL_ERR_CERTIFICATE`, `TUNNEL_ERR_ADDRESS`,
/// `TUNNEL_ERR_LISTEN`, `TUNNEL_ERR_IO`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_agent_start(
    opts: *const tunnel_agent_opts,
    out: *mut *mut tunnel_agent,
) -> tunnel_result {
    entry("tunnel_agent_start", || {
        let cfg = agent_config(ref_arg(opts, "opts")?)?;
        put_box(
            out,
            || {
                Ok(tunnel_agent(crate::engine::tunnel_engine::new(
                    Engine::start(cfg)?,
                )))
            },
            "out",
        )
    })
}

fn state_code(s: &AgentState) -> (u32, String) {
    match s {
        AgentState::Connecting => (TUNNEL_AGENT_CONNECTING, String::new()),
        AgentState::Reconnecting => (TUNNEL_AGENT_RECONNECTING, String::new()),
        AgentState::Connected => (TUNNEL_AGENT_CONNECTED, String::new()),
        AgentState::Finished(why) => (TUNNEL_AGENT_FINISHED, why.clone()),
        _ => (TUNNEL_AGENT_STOPPED, "stopped".into()),
    }
}

/// Writes the agent's state (`TUNNEL_AGENT_*`) into `*state` and, when `reason` is not NULL,
/// why it finished into `*reason` (`""` unless finished; never a token), a string the
/// program frees with `tunnel_string_free`. A stopped agent reads `TUNNEL_AGENT_STOPPED`.
/// Thread-safe. Errors: `TUNNEL_ERR_NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_agent_state(
    agent: *const tunnel_agent,
    state: *mut u32,
    reason: *mut *mut c_char,
) -> tunnel_result {
    entry("tunnel_agent_state", || {
        let a = ref_arg(agent, "agent")?;
        let (code, why) =
            a.0.with(|e| Ok(e.agent_state(NAME).unwrap_or(AgentState::Stopped)))
                .map(|s| state_code(&s))
                .unwrap_or((TUNNEL_AGENT_STOPPED, "stopped".into()));
        write_out(state, code, "state")?;
        if !reason.is_null() {
            write_out(reason, c_string(&why).into_raw(), "reason")?;
        }
        Ok(())
    })
}

/// Waits up to `timeout_ms` for the agent to give up; `*state` is then its state
/// (`TUNNEL_AGENT_FINISHED` if it did). Thread-safe; blocks. Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_SHUT_DOWN` (stopped).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_agent_wait_finished(
    agent: *const tunnel_agent,
    timeout_ms: u32,
    state: *mut u32,
) -> tunnel_result {
    entry("tunnel_agent_wait_finished", || {
        let a = ref_arg(agent, "agent")?;
        let s = a.0.with(|e| {
            Ok(
                e.wait_agent_finished(Duration::from_millis(timeout_ms.into()))
                    .map(|(_, s)| s)
                    .or_else(|| e.agent_state(NAME))
                    .unwrap_or(AgentState::Stopped),
            )
        })?;
        write_out(state, state_code(&s).0, "state")
    })
}

/// Writes the port a source listens on for `service` (its `NAME`; `""` for a V1 tunnel's
/// one service) into `*port`: what port 0 picked. Thread-safe. Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_INVALID_ARGUMENT` (not a source's service),
/// `TUNNEL_ERR_SHUT_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_agent_local_port(
    agent: *const tunnel_agent,
    service: *const c_char,
    port: *mut u16,
) -> tunnel_result {
    entry("tunnel_agent_local_port", || {
        let a = ref_arg(agent, "agent")?;
        let service = str_arg(service, "service")?;
        let addr = a.0.with(|e| {
            e.source_addr(NAME, service).ok_or_else(|| {
                Failure::new(
                    tunnel_result::TUNNEL_ERR_INVALID_ARGUMENT,
                    format!("the agent is no source with a service {service:?}"),
                )
            })
        })?;
        write_out(port, addr.port(), "port")
    })
}

/// Stops the agent: it closes its tunnel connection and local connections (after at most
/// `drain_ms` for open ones) and its threads end; it still has to be freed. Thread-safe.
/// Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_SHUT_DOWN` (stopped already).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_agent_stop(agent: *const tunnel_agent, drain_ms: u32) -> tunnel_result {
    entry("tunnel_agent_stop", || {
        let a = ref_arg(agent, "agent")?;
        crate::engine::shutdown(&a.0, drain_ms)
    })
}

/// Frees an agent (stopping it at once if it runs) and sets `*agent` to NULL; NULL or
/// `*agent == NULL` is a no-op. Not thread-safe: call it after every other call on the agent
/// has returned. Always `TUNNEL_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_agent_free(agent: *mut *mut tunnel_agent) -> tunnel_result {
    entry("tunnel_agent_free", || {
        drop(take_box(agent));
        Ok(())
    })
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

fn api(url: *const c_char, token: *const c_char) -> Result<TunnelApi, Failure> {
    let api = TunnelApi::new(str_arg(url, "api")?)?;
    Ok(match opt_str_arg(token, "api_token")? {
        Some(t) => api.bearer_token(t),
        None => api,
    })
}

/// A token's text, `""` when there is none.
fn secret(s: &Option<SecretText>) -> String {
    s.as_ref().map(|s| s.0.clone()).unwrap_or_default()
}

fn put_string(out: *mut *mut c_char, s: &str, what: &str) -> Result<(), Failure> {
    write_out(out, c_string(s).into_raw(), what)
}

/// Opens a tunnel through the relay's API at `api` (`http://HOST:PORT`; `api_token` its
/// bearer token, or NULL) with `services_len` service names (0: a V1 tunnel with one unnamed
/// service), a lifetime in minutes (0: the relay's), a thing and a description (NULL: none).
/// Its id and the two access tokens go into `*id`, `*source_token` and `*destination_token`,
/// strings the program frees with `tunnel_string_free` (the tokens are secrets: they are
/// shown this once). Thread-safe; blocks for the call (at most 30 s). Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_ADDRESS` (a bad URL), `TUNNEL_ERR_TUNNEL_API`
/// (no answer, or refused: the message names the URL, the status and the API's message).
/// `tunnel_api_open_seconds` takes the lifetime in seconds.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_api_open(
    api_url: *const c_char,
    api_token: *const c_char,
    services: *const *const c_char,
    services_len: usize,
    lifetime_minutes: u32,
    thing: *const c_char,
    description: *const c_char,
    id: *mut *mut c_char,
    source_token: *mut *mut c_char,
    destination_token: *mut *mut c_char,
) -> tunnel_result {
    entry("tunnel_api_open", || {
        let lifetime = u64::from(lifetime_minutes) * 60;
        api_open(
            (api_url, api_token),
            (services, services_len),
            lifetime,
            (thing, description),
            (id, source_token, destination_token),
        )
    })
}

/// `tunnel_api_open` with the lifetime in seconds (0: the relay's), as the CLI's
/// `--lifetime 90s`: whole minutes are sent as AWS's `maxLifetimeTimeoutMinutes`, anything
/// else as our relay's `maxLifetimeTimeoutSeconds` (AWS's service takes whole minutes only).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_api_open_seconds(
    api_url: *const c_char,
    api_token: *const c_char,
    services: *const *const c_char,
    services_len: usize,
    lifetime_seconds: u32,
    thing: *const c_char,
    description: *const c_char,
    id: *mut *mut c_char,
    source_token: *mut *mut c_char,
    destination_token: *mut *mut c_char,
) -> tunnel_result {
    entry("tunnel_api_open_seconds", || {
        api_open(
            (api_url, api_token),
            (services, services_len),
            lifetime_seconds.into(),
            (thing, description),
            (id, source_token, destination_token),
        )
    })
}

/// Both opens: the lifetime in seconds, 0 for the relay's.
fn api_open(
    (api_url, api_token): (*const c_char, *const c_char),
    (services, services_len): (*const *const c_char, usize),
    lifetime_seconds: u64,
    (thing, description): (*const c_char, *const c_char),
    (id, source_token, destination_token): (*mut *mut c_char, *mut *mut c_char, *mut *mut c_char),
) -> Result<(), Failure> {
    let client = api(api_url, api_token)?;
    let names = if services_len == 0 {
        Vec::new()
    } else {
        str_list_arg(services, services_len, "services")?
    };
    if id.is_null() || source_token.is_null() || destination_token.is_null() {
        return Err(Failure::new(
            tunnel_result::TUNNEL_ERR_NULL_ARGUMENT,
            "`id`, `source_token` or `destination_token` is NULL",
        ));
    }
    let t = client.open_for(
        &names,
        (lifetime_seconds > 0).then(|| std::time::Duration::from_secs(lifetime_seconds)),
        opt_str_arg(thing, "thing")?,
        opt_str_arg(description, "description")?,
    )?;
    put_string(id, &t.id, "id")?;
    put_string(source_token, &secret(&t.source), "source_token")?;
    put_string(
        destination_token,
        &secret(&t.destination),
        "destination_token",
    )
}

/// Lists the tunnels (only `thing`'s unless NULL) as the API's JSON
/// (`{"tunnelSummaries": [...]}`) in `*json`, freed with `tunnel_string_free`. Thread-safe;
/// blocks. Errors: as `tunnel_api_open`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_api_list(
    api_url: *const c_char,
    api_token: *const c_char,
    thing: *const c_char,
    json: *mut *mut c_char,
) -> tunnel_result {
    entry("tunnel_api_list", || {
        let answer = api(api_url, api_token)?.list(opt_str_arg(thing, "thing")?)?;
        put_string(json, &answer.to_string(), "json")
    })
}

/// Describes tunnel `id` as the API's JSON (`{"tunnel": {...}}`) in `*json`, freed with
/// `tunnel_string_free`. Thread-safe; blocks. Errors: as `tunnel_api_open`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_api_describe(
    api_url: *const c_char,
    api_token: *const c_char,
    id: *const c_char,
    json: *mut *mut c_char,
) -> tunnel_result {
    entry("tunnel_api_describe", || {
        let answer = api(api_url, api_token)?.describe(str_arg(id, "id")?)?;
        put_string(json, &answer.to_string(), "json")
    })
}

/// Replaces tunnel `id`'s access tokens for `side` (`TUNNEL_ROTATE_SOURCE`,
/// `TUNNEL_ROTATE_DESTINATION` or `TUNNEL_ROTATE_BOTH`): the relay drops an agent connected
/// with an old token, and the old tokens stop working at once. With `client_token` (32 to 128
/// characters of `[A-Za-z0-9-]`; NULL: none) only an agent that brings it (its
/// `client_token` option) may use the new tokens, and may reconnect with them. The new tokens
/// go into `*source_token` and `*destination_token` (`""` for a side left unchanged), strings
/// the program frees with `tunnel_string_free` (secrets: shown this once). Thread-safe;
/// blocks for the call (at most 30 s). Errors: `TUNNEL_ERR_NULL_ARGUMENT`,
/// `TUNNEL_ERR_INVALID_ARGUMENT` (an unknown `side`), `TUNNEL_ERR_ADDRESS` (a bad URL),
/// `TUNNEL_ERR_TUNNEL_API` (no answer, or refused: a closed or unknown tunnel, a bad client
/// token; the message names the URL, the status and the API's message).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_api_rotate(
    api_url: *const c_char,
    api_token: *const c_char,
    id: *const c_char,
    side: u32,
    client_token: *const c_char,
    source_token: *mut *mut c_char,
    destination_token: *mut *mut c_char,
) -> tunnel_result {
    entry("tunnel_api_rotate", || {
        let client = api(api_url, api_token)?;
        let id = str_arg(id, "id")?;
        let side = match side {
            TUNNEL_ROTATE_SOURCE => RotateSide::Source,
            TUNNEL_ROTATE_DESTINATION => RotateSide::Destination,
            TUNNEL_ROTATE_BOTH => RotateSide::Both,
            s => {
                return Err(Failure::new(
                    tunnel_result::TUNNEL_ERR_INVALID_ARGUMENT,
                    format!(
                        "side {s} is none of TUNNEL_ROTATE_SOURCE (0), TUNNEL_ROTATE_DESTINATION \
                         (1) and TUNNEL_ROTATE_BOTH (2)"
                    ),
                ));
            }
        };
        if source_token.is_null() || destination_token.is_null() {
            return Err(Failure::new(
                tunnel_result::TUNNEL_ERR_NULL_ARGUMENT,
                "`source_token` or `destination_token` is NULL",
            ));
        }
        let t = client.rotate(id, side, opt_str_arg(client_token, "client_token")?)?;
        put_string(source_token, &secret(&t.source), "source_token")?;
        put_string(
            destination_token,
            &secret(&t.destination),
            "destination_token",
        )
    })
}

/// Closes tunnel `id` (both agents get a close frame and finish; its tokens stop working);
/// with `delete` non-zero it is forgotten too. Thread-safe; blocks. Errors: as
/// `tunnel_api_open`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_api_close(
    api_url: *const c_char,
    api_token: *const c_char,
    id: *const c_char,
    delete: i32,
) -> tunnel_result {
    entry("tunnel_api_close", || {
        api(api_url, api_token)?.close(str_arg(id, "id")?, delete != 0)?;
        Ok(())
    })
}

/// Writes the ports of relay `name` (a `[[relay]]` of the engine's configuration) into
/// `*agents_port` (where agents connect) and `*api_port` (its tunnel API): what port 0
/// picked. Thread-safe. Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_INVALID_ARGUMENT` (no
/// relay of that name), `TUNNEL_ERR_SHUT_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_relay_ports(
    engine: *const crate::engine::tunnel_engine,
    name: *const c_char,
    agents_port: *mut u16,
    api_port: *mut u16,
) -> tunnel_result {
    entry("tunnel_engine_relay_ports", || {
        let h = ref_arg(engine, "engine")?;
        let name = str_arg(name, "name")?;
        let (agents, api) = h.with(|e| match (e.relay_addr(name), e.relay_api_addr(name)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(Failure::new(
                tunnel_result::TUNNEL_ERR_INVALID_ARGUMENT,
                format!("the engine runs no relay named {name:?}"),
            )),
        })?;
        write_out(agents_port, agents.port(), "agents_port")?;
        write_out(api_port, api.port(), "api_port")
    })
}
