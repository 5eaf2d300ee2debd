use splice_test_pki::Pki;

use super::*;

/// Once the drain began, `connect` refuses at once; once every shard has exited, a connection
/// that no shard takes is refused too, and given back: it counts nowhere.
#[test]
fn connect_is_refused_while_draining() {
    let pki = Pki::new();
    let mut f = ForwarderConfig::new(Mode::Client, "", "127.0.0.1:9");
    f.name = "out".into();
    f.ca = Some(pki.ca.path.clone());
    let engine = Engine::start(EngineConfig {
        threads: Some(2),
        driver: DriverKind::Epoll,
        ktls: KtlsMode::Off,
        forwarders: vec![f],
        ..EngineConfig::default()
    })
    .expect("start");
    engine.begin_drain();
    let e = engine.connect("out").expect_err("connect while draining");
    assert!(matches!(e, Error::Draining), "{e}");
    assert!(e.to_string().contains("draining"), "{e}");

    // The shards exit (nothing is open); a connect that got past the flag finds none to take
    // its connection.
    let end = Instant::now() + Duration::from_secs(30);
    while !engine.shards.iter().all(|s| s.is_finished()) {
        assert!(
            Instant::now() < end,
            "the shards did not exit after the drain"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    engine.draining.store(false, Relaxed);
    let e = engine
        .connect("out")
        .expect_err("connect with no shard left");
    assert!(matches!(e, Error::Draining), "{e}");
    let s = &engine.stats()[0];
    assert_eq!((s.accepted, s.active, s.refused), (0, 0, 0), "{s:?}");
}

/// `check` lists a connector with no listen address.
#[test]
fn check_lists_a_connector() {
    let pki = Pki::new();
    let path = pki.path().join("connector.toml");
    let text = format!(
        "[[forwarder]]\nname = \"db\"\nmode = \"client\"\nconnect = \"127.0.0.1:5432\"\nca = {:?}\n",
        pki.ca.path.display().to_string()
    );
    std::fs::write(&path, text).expect("write the file");
    let checked = Engine::check_file(&path).expect("check").forwarders;
    assert_eq!(checked[0].listen, Listening::ConnectOnly);
    assert!(checked[0].listen.to_string().contains("no listener"));
}
