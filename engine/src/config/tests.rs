use super::*;

fn parse(text: &str) -> Result<EngineConfig> {
    let dir = std::env::temp_dir().join(format!("splice-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // One file per call: tests run in parallel.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("c{n}.toml"));
    std::fs::write(&path, text).unwrap();
    EngineConfig::from_file(&path)
}

#[test]
fn pins_are_checked_with_the_file() {
    let base = "[[forwarder]]\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\n\
                connect = \"localhost:443\"\n";
    let msg = parse(&format!("{base}pin = [\"sha256:AAAA\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`pin`") && msg.contains("3 bytes"), "{msg}");
    let good = format!("sha256:{}", "ab".repeat(32));
    let msg = parse(&format!("{base}pin = [\"{good}\"]\nca = \"ca.pem\"\n"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`pin` and `ca` exclude each other"), "{msg}");
    let cfg = parse(&format!("{base}pin = [\"{good}\"]\naccess_log = false\n")).unwrap();
    assert_eq!(cfg.forwarders[0].pin, vec![good]);
    assert_eq!(cfg.forwarders[0].access_log, Some(false));
    assert!(cfg.access_log);
}

#[test]
fn proxy_protocol_keys() {
    let cfg = parse(
        r#"
[[forwarder]]
mode = "server"
listen = "127.0.0.1:3443"
connect = "127.0.0.1:8080"
cert = "c.pem"
key = "k.pem"
accept_proxy = true
send_proxy = "v2"
"#,
    )
    .unwrap();
    assert!(cfg.forwarders[0].accept_proxy);
    assert_eq!(cfg.forwarders[0].send_proxy, Some(ProxyVersion::V2));
    cfg.validate("f").unwrap();
    let bad = parse(
        r#"
[[forwarder]]
mode = "server"
listen = "127.0.0.1:3444"
connect = "127.0.0.1:8080"
cert = "c.pem"
key = "k.pem"
send_proxy = "v3"
"#,
    );
    let e = bad.unwrap_err().to_string();
    assert!(e.contains("v3") && e.contains("line"), "{e}");
    let mut client = ForwarderConfig::new(Mode::Client, "127.0.0.1:1", "h:2");
    client.send_proxy = Some(ProxyVersion::V1);
    let e = client.validate("f").unwrap_err().to_string();
    assert!(e.contains("server mode only"), "{e}");
}

#[test]
fn parses_full_file_and_resolves_paths() {
    let cfg = parse(
        r#"
threads = 2
driver = "epoll"
drain_timeout = "3s"
busy_poll = "20us"
[[forwarder]]
name = "a"
mode = "client"
listen = "127.0.0.1:3000"
connect = "example.com:443"
ca = "ca.pem"
alpn = ["h2"]
connect_timeout = "250ms"
[[forwarder]]
mode = "server"
listen = "127.0.0.1:3443"
connect = "127.0.0.1:8080"
cert = "/abs/c.pem"
key = "k.pem"
"#,
    )
    .unwrap();
    assert_eq!(cfg.threads, Some(2));
    assert_eq!(cfg.driver, DriverKind::Epoll);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(3));
    assert_eq!(cfg.busy_poll, Some(Duration::from_micros(20)));
    assert_eq!(cfg.forwarders.len(), 2);
    assert!(cfg.forwarders[0].ca.as_ref().unwrap().is_absolute());
    assert_eq!(
        cfg.forwarders[0].connect_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(
        cfg.forwarders[1].cert.as_deref(),
        Some(Path::new("/abs/c.pem"))
    );
}

#[test]
fn busy_polling_is_on_up_to_50us_unless_set() {
    let base = "[[forwarder]]\nmode='client'\nlisten='127.0.0.1:1'\nconnect='a:1'\n";
    assert_eq!(
        parse(base).unwrap().busy_poll_ceiling(),
        Duration::from_micros(50)
    );
    assert_eq!(
        EngineConfig::default().busy_poll_ceiling(),
        Duration::from_micros(50)
    );
    let longer = parse(&format!("busy_poll = \"100us\"\n{base}")).unwrap();
    assert_eq!(longer.busy_poll_ceiling(), Duration::from_micros(100));
    let off = parse(&format!("busy_poll = \"0s\"\n{base}")).unwrap();
    assert!(off.busy_poll_ceiling().is_zero());
}

#[test]
fn idle_timeout_is_off_unless_set_and_never_zero() {
    // Parsed in memory: `parse` names its file after the text's length, shared by tests.
    let parse = |extra: &str| {
        let text =
            format!("[[forwarder]]\nmode='client'\nlisten='127.0.0.1:1'\nconnect='a:1'\n{extra}");
        let cfg: EngineConfig = toml::from_str(&text).unwrap();
        cfg.validate("test")
            .map(|()| cfg.forwarders[0].idle_timeout)
    };
    assert_eq!(parse("").unwrap(), None);
    assert_eq!(
        parse("idle_timeout = \"90s\"").unwrap(),
        Some(Duration::from_secs(90))
    );
    let err = parse("idle_timeout = \"0s\"").unwrap_err().to_string();
    assert!(err.contains("idle_timeout"), "{err}");
}

#[test]
fn unknown_key_is_named_with_file() {
    let err =
        parse("[[forwarder]]\nmode='client'\nlisten='127.0.0.1:1'\nconnect='a:1'\nbogus_key=1\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("bogus_key"), "{err}");
    assert!(err.contains(".toml"), "{err}");
}

#[test]
fn bad_addresses_are_named() {
    let err = parse("[[forwarder]]\nmode='client'\nlisten='nonsense'\nconnect='a:1'\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nonsense"), "{err}");
    assert!(split_host_port("host:99999").is_err());
    assert_eq!(split_host_port("[::1]:443").unwrap(), ("::1".into(), 443));
}

fn two(a: &str, b: &str) -> String {
    format!(
        "threads = 1\n\n[[forwarder]]\nname = 'one'\nmode = 'client'\nlisten = '{a}'\nconnect = 'x:1'\n\n\
         [[forwarder]]\nname = 'two'\nmode = 'client'\nlisten = '{b}'\nconnect = 'x:2'\n"
    )
}

#[test]
fn duplicate_listen_addresses_are_refused_naming_both() {
    for (a, b) in [
        ("127.0.0.1:4443", "127.0.0.1:4443"),
        ("0.0.0.0:4443", "127.0.0.1:4443"),
        ("127.0.0.1:4443", "0.0.0.0:4443"),
        ("[::]:4443", "[::1]:4443"),
        ("[::1]:4443", "[0:0:0:0:0:0:0:1]:4443"),
    ] {
        let err = parse(&two(a, b)).unwrap_err().to_string();
        assert!(
            err.contains("\"one\"") && err.contains("\"two\"") && err.contains("line 12:"),
            "{a} {b}: {err}"
        );
        assert!(err.contains(".toml"), "{err}");
    }
    for (a, b) in [
        ("[::]:4443", "0.0.0.0:4443"),
        ("127.0.0.1:4443", "127.0.0.2:4443"),
        ("127.0.0.1:4443", "127.0.0.1:4444"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        parse(&two(a, b)).unwrap_or_else(|e| panic!("{a} {b}: {e}"));
    }
}

#[test]
fn errors_name_file_line_and_key() {
    let base = "threads = 1\n[[forwarder]]\nname = 'db'\nmode = 'client'\nlisten = '127.0.0.1:1'\nconnect = 'a:1'\n";
    for (extra, line, key) in [
        ("max_connections = 'many'\n", 7, "`max_connections`"),
        ("connect_timeout = '5 parsecs'\n", 7, "`connect_timeout`"),
        ("tls_versions = ['1.1']\n", 7, "`tls_versions`"),
        ("client_ca = 'x.pem'\n", 7, "`client_ca`"),
        ("unresolved_upstream = 'wait'\n", 7, "`unresolved_upstream`"),
    ] {
        let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
        assert!(err.contains(&format!("line {line}:")), "{extra}: {err}");
        assert!(
            err.contains(key) && err.contains("\"db\""),
            "{extra}: {err}"
        );
    }
    let bad_listen = base.replace("127.0.0.1:1", "localhost:1");
    let err = parse(&bad_listen).unwrap_err().to_string();
    assert!(err.contains("line 5:") && err.contains("`listen`"), "{err}");
    let err = parse(&format!("log_level = 'verbose'\n{base}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1:") && err.contains("`log_level`"),
        "{err}"
    );
    assert!(err.contains("error, warn"), "{err}");
    let no_threads = base.replace("threads = 1\n", "");
    let err = parse(&format!("threads = 'x'\n{no_threads}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1:") && err.contains("`threads`"),
        "{err}"
    );
}

#[test]
fn unresolved_upstream_is_fail_unless_set() {
    let base = "[[forwarder]]\nmode='client'\nlisten='127.0.0.1:1'\nconnect='a:1'\n";
    let cfg = parse(base).unwrap();
    assert_eq!(
        cfg.forwarders[0].unresolved_upstream,
        UnresolvedUpstream::Fail
    );
    let cfg = parse(&format!("{base}unresolved_upstream = 'reset'\n")).unwrap();
    assert_eq!(
        cfg.forwarders[0].unresolved_upstream,
        UnresolvedUpstream::Reset
    );
    let err = parse(&format!("{base}unresolved_upstream = 'later'\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fail") && err.contains("reset"), "{err}");
}

#[test]
fn log_format_and_level_in_the_file() {
    let base = "[[forwarder]]\nmode='client'\nlisten='127.0.0.1:1'\nconnect='a:1'\n";
    let cfg = parse(&format!(
        "log_format = 'json'\nlog_level = 'warning'\n{base}"
    ))
    .unwrap();
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(parse(base).unwrap().log_format, LogFormat::Text);
    let err = parse(&format!("log_format = 'xml'\n{base}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`log_format`") && err.contains("json"),
        "{err}"
    );
}

#[test]
fn the_example_parses() {
    let cfg: EngineConfig = toml::from_str(EXAMPLE).unwrap();
    cfg.validate("example").unwrap();
    assert_eq!(cfg.forwarders.len(), 2);
}

#[test]
fn server_needs_cert() {
    let err = parse("[[forwarder]]\nmode='server'\nlisten='127.0.0.1:1'\nconnect='a:1'\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cert"), "{err}");
}

/// Each builder method sets the key of the same name: a configuration built in code equals the
/// one the TOML loader reads from a file with every key set.
#[test]
fn builders_set_what_the_file_keys_set() {
    let text = r#"
threads = 3
driver = "epoll"
ktls = "off"
log_level = "debug"
log_format = "json"
metrics = "127.0.0.1:9100"
drain_timeout = "7s"
busy_poll = "0s"
access_log = false
balance = "round-robin"

[[forwarder]]
name = "out"
mode = "client"
listen = "127.0.0.1:3000"
connect = "db.example.com:443"
pin = ["sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "sha256:abababababababababababababababababababababababababababababababab"]
sni = "db.internal"
cert = "/etc/client.pem"
key = "/etc/client-key.pem"
alpn = ["h2", "postgresql"]
tls_versions = ["1.3"]
max_connections = 12
connect_timeout = "2s"
handshake_timeout = "3s"
idle_timeout = "4s"
resumption = false
access_log = true
accept_proxy = true

[[forwarder]]
mode = "server"
listen = "127.0.0.1:4430"
connect = "127.0.0.1:8080"
cert = "/etc/server.pem"
key = "/etc/server-key.pem"
client_ca = "/etc/clients.pem"
send_proxy = "v2"

[[forwarder]]
mode = "client"
listen = "127.0.0.1:3001"
connect = "db.example.com:443"
ca = "/etc/ca.pem"
"#;
    let mut from_file = parse(text).unwrap();
    from_file.source_file = None;
    let secs = Duration::from_secs;
    let built = EngineConfig::new()
        .threads(3)
        .driver(DriverKind::Epoll)
        .ktls(KtlsMode::Off)
        .log_level("debug")
        .log_format(LogFormat::Json)
        .metrics("127.0.0.1:9100")
        .drain_timeout(secs(7))
        .busy_poll(Duration::ZERO)
        .access_log(false)
        .balance(Balance::RoundRobin)
        .forwarder(
            ForwarderConfig::client("127.0.0.1:3000", "db.example.com:443")
                .name("out")
                .pin("sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
                .pin("sha256:abababababababababababababababababababababababababababababababab")
                .sni("db.internal")
                .certificate("/etc/client.pem", "/etc/client-key.pem")
                .alpn("h2")
                .alpn("postgresql")
                .tls_version("1.3")
                .max_connections(12)
                .connect_timeout(secs(2))
                .handshake_timeout(secs(3))
                .idle_timeout(secs(4))
                .resumption(false)
                .access_log(true)
                .accept_proxy(true),
        )
        .forwarder(
            ForwarderConfig::server(
                "127.0.0.1:4430",
                "127.0.0.1:8080",
                "/etc/server.pem",
                "/etc/server-key.pem",
            )
            .client_ca("/etc/clients.pem")
            .send_proxy(ProxyVersion::V2),
        )
        .forwarder(
            ForwarderConfig::client("127.0.0.1:3001", "db.example.com:443").ca("/etc/ca.pem"),
        );
    assert_eq!(built, from_file);
    // The defaults of `new` are those of a file that sets nothing.
    let mut empty = parse("").unwrap();
    empty.source_file = None;
    assert_eq!(EngineConfig::new(), empty);
    assert_eq!(
        ForwarderConfig::client("127.0.0.1:1", "a:1"),
        ForwarderConfig::new(Mode::Client, "127.0.0.1:1", "a:1")
    );
}

/// A builder does not check; starting does, and the error names the key.
#[test]
fn a_built_configuration_is_checked_like_a_file() {
    let cfg = EngineConfig::new().forwarder(ForwarderConfig::client("localhost:3000", "a:443"));
    let msg = cfg.validate("configuration").unwrap_err().to_string();
    assert!(msg.contains("`listen` must be IP:PORT"), "{msg}");
}

#[test]
fn a_client_forwarder_without_listen_is_a_connector() {
    let cfg =
        parse("[[forwarder]]\nname = \"db\"\nmode = \"client\"\nconnect = \"db:443\"\n").unwrap();
    assert!(!cfg.forwarders[0].listens());
    // Two connectors never collide on an address.
    let two = "[[forwarder]]\nname = \"a\"\nmode = \"client\"\nconnect = \"a:443\"\n\
               [[forwarder]]\nname = \"b\"\nmode = \"client\"\nconnect = \"b:443\"\n";
    assert_eq!(parse(two).unwrap().forwarders.len(), 2);
}

#[test]
fn only_a_named_client_forwarder_may_go_without_listen() {
    let msg = parse(
        "[[forwarder]]\nname = \"api\"\nmode = \"server\"\nconnect = \"b:80\"\n\
         cert = \"c.pem\"\nkey = \"k.pem\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("line 1") && msg.contains("`listen` is missing") && msg.contains("client"),
        "{msg}"
    );
    let msg = parse("[[forwarder]]\nmode = \"client\"\nconnect = \"db:443\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("needs a") && msg.contains("`name`"), "{msg}");
    let msg = parse(
        "[[forwarder]]\nname = \"db\"\nmode = \"client\"\nconnect = \"db:443\"\naccept_proxy = true\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("line 5") && msg.contains("needs a listener"),
        "{msg}"
    );
}

#[test]
fn balance_key() {
    assert_eq!(parse("").unwrap().balance, Balance::Kernel);
    let cfg = parse("balance = \"round-robin\"\n").unwrap();
    assert_eq!(cfg.balance, Balance::RoundRobin);
    let msg = parse("balance = \"random\"\n").unwrap_err().to_string();
    assert!(
        msg.contains("line 1") && msg.contains("`balance`") && msg.contains("round-robin"),
        "{msg}"
    );
}

#[test]
fn from_toml_reads_text_as_a_file_is_read() {
    let text = "threads = 1\n[[forwarder]]\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\nconnect = \"db:443\"\nca = \"ca.pem\"\n";
    let cfg = EngineConfig::from_toml(text, "<string>").expect("valid");
    assert_eq!(cfg.forwarders[0].ca.as_deref(), Some(Path::new("ca.pem")));
    assert!(cfg.source_file.is_none());
    let err = EngineConfig::from_toml("threads = 1\nthread = 2\n", "<string>").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("<string>: line 2: `thread`: unknown field"),
        "{err}"
    );
}

const RELAY: &str = "[[relay]]\nname = \"edge\"\nlisten = \"127.0.0.1:4443\"\ncert = \"c.pem\"\n\
                     key = \"k.pem\"\napi = \"127.0.0.1:4480\"\n";
const SOURCE: &str = "[[source]]\nname = \"laptop\"\nrelay = \"relay.example:443\"\n";
const DESTINATION: &str = "[[destination]]\nname = \"pump\"\nrelay = \"relay.example:443\"\n";

/// The error's text, which must name the file (`c<N>.toml`), `line` and `key`.
fn refused(text: &str, line: usize, key: &str) -> String {
    let msg = parse(text).unwrap_err().to_string();
    assert!(msg.contains(".toml: "), "no file in {msg}");
    assert!(
        msg.contains(&format!("line {line}:")),
        "not line {line}: {msg}"
    );
    assert!(msg.contains(&format!("`{key}`")), "no `{key}` in {msg}");
    msg
}

#[test]
fn tunnel_tables_parse_and_resolve_paths() {
    let cfg = parse(&format!(
        "{RELAY}api_token_file = \"api.token\"\nstate = \"state/relay.sqlite\"\n\
         max_lifetime = \"1h\"\nkeep_closed = \"10m\"\n\
         {SOURCE}token_file = \"/etc/tok\"\nca = \"ca.pem\"\nlisten = [\"SSH=127.0.0.1:2222\", \
         \"web=127.0.0.1:8080\"]\nprotocol = \"v2\"\n\
         {DESTINATION}connect = [\"SSH=localhost:22\"]\n\
         client_token = \"0123456789abcdef0123456789abcdef-x\"\n"
    ))
    .unwrap();
    let r = &cfg.relays[0];
    assert!(r.cert.is_absolute() && r.cert.ends_with("c.pem"));
    assert!(r.api_token_file.as_ref().unwrap().is_absolute());
    assert!(
        Path::new(r.state.as_deref().unwrap()).is_absolute(),
        "{:?}",
        r.state
    );
    assert_eq!(r.max_lifetime, Duration::from_secs(3600));
    assert_eq!(r.keep_closed, Duration::from_secs(600));
    let s = &cfg.sources[0];
    assert_eq!(s.token_file.as_deref(), Some(Path::new("/etc/tok")));
    assert!(s.ca.as_ref().unwrap().is_absolute());
    assert_eq!(s.protocol, TunnelProtocol::V2);
    assert_eq!(cfg.destinations[0].connect, vec!["SSH=localhost:22"]);
    // The client token is not shown by Debug.
    assert!(!format!("{cfg:?}").contains("0123456789abcdef"));

    // `:memory:` is not a path.
    let cfg = parse(&format!("{RELAY}state = \":memory:\"\n")).unwrap();
    assert_eq!(cfg.relays[0].state.as_deref(), Some(":memory:"));
    // Closed tunnels are kept three hours unless told otherwise, as AWS keeps them.
    assert_eq!(cfg.relays[0].keep_closed, Duration::from_secs(3 * 3600));
}

#[test]
fn tunnel_table_errors_name_file_line_and_key() {
    refused(&RELAY.replace("127.0.0.1:4480", "localhost:80"), 6, "api");
    refused(&format!("{RELAY}max_services = 0\n"), 7, "max_services");
    refused(
        &format!("{RELAY}max_lifetime = \"500ms\"\n"),
        7,
        "max_lifetime",
    );
    refused(
        &format!("{RELAY}ping_after = \"2m\"\nidle_timeout = \"1m\"\n"),
        8,
        "idle_timeout",
    );
    refused(
        &format!("{SOURCE}listen = [\"SSH=127.0.0.1:1\"]\ntoken = \"t\"\ntoken_file = \"f\"\n"),
        5,
        "token",
    );
    let msg = refused(
        &format!("{SOURCE}listen = [\"SSH=127.0.0.1:1\"]\nclient_token = \"short-secret\"\n"),
        5,
        "client_token",
    );
    assert!(!msg.contains("short-secret"), "the token leaked: {msg}");
    refused(
        &format!("{SOURCE}listen = [\"SSH=127.0.0.1:1\"]\n").replace("relay.example:443", "x"),
        3,
        "relay",
    );
    refused(&format!("{SOURCE}listen = []\n"), 4, "listen");
    refused(
        &format!("{SOURCE}listen = [\"SSH=127.0.0.1:1\"]\nconnections_per_service = 0\n"),
        5,
        "connections_per_service",
    );
    refused(
        &format!("{DESTINATION}connect = [\"SSH=h:1\"]\nconnections_per_service = 0\n"),
        5,
        "connections_per_service",
    );
    refused(
        &format!("{SOURCE}listen = [\"S H=127.0.0.1:1\"]\n"),
        4,
        "listen",
    );
    refused(
        &format!("{SOURCE}listen = [\"{}=127.0.0.1:1\"]\n", "x".repeat(129)),
        4,
        "listen",
    );
    refused(
        &format!("{SOURCE}listen = [\"SSH=127.0.0.1:1\", \"SSH=127.0.0.1:2\"]\n"),
        4,
        "listen",
    );
    let msg = refused(
        &format!("{SOURCE}listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n"),
        4,
        "listen",
    );
    assert!(msg.contains("more than one unnamed service"), "{msg}");
    let msg = refused(
        &format!("{SOURCE}listen = [\"127.0.0.1:1\", \"SSH=127.0.0.1:2\"]\n"),
        4,
        "listen",
    );
    assert!(msg.contains("mixes a bare ADDR"), "{msg}");
    refused(
        &format!("{SOURCE}listen = [\"SSH=localhost:1\"]\n"),
        4,
        "listen",
    );
    refused(
        &format!("{SOURCE}listen = [\"a=127.0.0.1:1\", \"b=127.0.0.1:2\"]\nprotocol = \"v1\"\n"),
        5,
        "protocol",
    );
    refused(
        &format!("{DESTINATION}connect = [\"SSH=nohost\"]\n"),
        4,
        "connect",
    );
    refused(
        &format!("{DESTINATION}connect = [\"SSH=h:1\"]\nconnect_timeout = \"0s\"\n"),
        5,
        "connect_timeout",
    );
    // An unknown key, and a bad protocol, at parse time.
    refused(
        &format!("{DESTINATION}connect = [\"h:1\"]\ntokn = \"x\"\n"),
        5,
        "tokn",
    );
    refused(
        &format!("{DESTINATION}connect = [\"h:1\"]\nprotocol = \"v4\"\n"),
        5,
        "protocol",
    );
}

#[test]
fn tunnel_names_are_unique_and_listeners_do_not_collide() {
    let msg = refused(&format!("{RELAY}{RELAY}"), 8, "name");
    assert!(msg.contains("two relays are named \"edge\""), "{msg}");
    // A relay on a forwarder's port.
    let msg = refused(
        &format!(
            "[[forwarder]]\nmode = \"client\"\nlisten = \"127.0.0.1:4443\"\n\
             connect = \"h:443\"\n{RELAY}"
        ),
        7,
        "listen",
    );
    assert!(msg.contains("forwarder"), "{msg}");
    // A relay's API on `metrics`.
    let msg = refused(&format!("metrics = \"127.0.0.1:4480\"\n{RELAY}"), 7, "api");
    assert!(msg.contains("`metrics`"), "{msg}");
    // A source service on the relay's API, and on another source.
    refused(
        &format!("{RELAY}{SOURCE}listen = [\"SSH=0.0.0.0:4480\"]\n"),
        10,
        "listen",
    );
    refused(
        &format!(
            "{SOURCE}listen = [\"a=127.0.0.1:7000\"]\n\
             [[source]]\nname = \"b\"\nrelay = \"r:1\"\nlisten = [\"127.0.0.1:7000\"]\n"
        ),
        8,
        "listen",
    );
    // Port 0 never collides.
    parse(&format!(
        "{}{SOURCE}listen = [\"a=127.0.0.1:0\"]\n",
        RELAY.replace("4443", "0").replace("4480", "0")
    ))
    .unwrap();
}

#[test]
fn tunnel_builders_make_what_the_file_makes() {
    let file = parse(&format!(
        "{RELAY}state = \"/s.sqlite\"\n{SOURCE}listen = [\"SSH=127.0.0.1:2222\", \
         \"127.0.0.1:1\"]\n"
    ));
    assert!(file.is_err(), "mixed");
    let file = parse(&format!(
        "{RELAY}state = \"/s.sqlite\"\nmax_services = 5\n\
         {SOURCE}listen = [\"SSH=127.0.0.1:2222\"]\ntoken_file = \"/t\"\n\
         {DESTINATION}connect = [\"localhost:22\"]\nprotocol = \"v1\"\n"
    ))
    .unwrap();
    let built = EngineConfig::new()
        .relay(
            RelayConfig::new("127.0.0.1:4443", "/x", "/y", "127.0.0.1:4480")
                .name("edge")
                .state("/s.sqlite")
                .max_services(5),
        )
        .source(
            SourceConfig::new("relay.example:443")
                .name("laptop")
                .service("SSH", "127.0.0.1:2222")
                .token_file("/t"),
        )
        .destination(
            DestinationConfig::new("relay.example:443")
                .name("pump")
                .service("", "localhost:22")
                .protocol(TunnelProtocol::V1),
        );
    built.validate("built").unwrap();
    let mut relay = file.relays[0].clone();
    relay.cert = "/x".into();
    relay.key = "/y".into();
    assert_eq!(built.relays[0], relay);
    assert_eq!(built.sources, file.sources);
    assert_eq!(built.destinations, file.destinations);
    // A built configuration is checked as a file is.
    let bad = EngineConfig::new().source(SourceConfig::new("r:1"));
    let msg = bad.validate("command line").unwrap_err().to_string();
    assert!(
        msg.contains("command line") && msg.contains("`listen`"),
        "{msg}"
    );
}

#[test]
fn the_examples_tunnel_tables_parse_once_uncommented() {
    let (head, tunnel) = EXAMPLE
        .split_once("# ---- the tunnel")
        .expect("a tunnel part");
    let uncommented: String = tunnel
        .lines()
        .skip(1)
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with('#') => format!("{rest}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let cfg = EngineConfig::from_toml(&format!("{head}{uncommented}"), "example").unwrap();
    assert_eq!(
        (cfg.relays.len(), cfg.sources.len(), cfg.destinations.len()),
        (1, 1, 1)
    );
    assert_eq!(cfg.sources[0].listen.len(), 2);
    // The keys a new user missed in it once.
    let s = &cfg.sources[0];
    assert!(s.sni.is_some() && s.client_token_file.is_some(), "{s:?}");
    assert!(EXAMPLE.contains("#half_close = ") && EXAMPLE.contains("`pin = [\"sha256:"));
    assert_eq!(cfg.relays[0].cors_origins, ["https://console.example:8443"]);
}

#[test]
fn cors_origins_must_be_origins() {
    let relay = |origins: &str| {
        format!(
            "[[relay]]\nlisten = \"127.0.0.1:8443\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             api = \"127.0.0.1:8480\"\ncors_origins = {origins}\n"
        )
    };
    let ok = EngineConfig::from_toml(
        &relay("[\"https://a.example:8443\", \"http://127.0.0.1:9000\", \"https://[::1]:1\"]"),
        "t",
    );
    assert!(ok.is_ok(), "{ok:?}");
    for bad in [
        "\"*\"",
        "\"https://a.example/\"",
        "\"a.example\"",
        "\"https://\"",
    ] {
        let e = EngineConfig::from_toml(&relay(&format!("[{bad}]")), "t")
            .expect_err(bad)
            .to_string();
        assert!(e.contains("cors_origins"), "{bad}: {e}");
    }
}

#[test]
fn a_relay_or_an_agent_polls_up_to_200us_unless_set() {
    let relay = parse(RELAY).unwrap();
    assert_eq!(relay.busy_poll_ceiling(), Duration::from_micros(200));
    let agent = parse(&format!(
        "{DESTINATION}token_file = \"/etc/tok\"\nconnect = [\"SSH=localhost:22\"]\n"
    ))
    .unwrap();
    assert_eq!(agent.busy_poll_ceiling(), Duration::from_micros(200));
    let set = parse(&format!("busy_poll = \"30us\"\n{RELAY}")).unwrap();
    assert_eq!(set.busy_poll_ceiling(), Duration::from_micros(30));
    let off = parse(&format!("busy_poll = \"0s\"\n{RELAY}")).unwrap();
    assert!(off.busy_poll_ceiling().is_zero());
}
