//! A small tunnel relay written with tungstenite (an independent WebSocket implementation),
//! for testing the agents against something other than our own relay: TLS (rustls), the
//! upgrade (echoes the newest subprotocol offered up to its own newest), SERVICE_IDS to each
//! peer on connect, then every binary message passed to the other peer as it is. One tunnel:
//! the latest source and the latest destination. It checks no token; it records each
//! upgrade's mode and client token.

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Message as WsMessage, WebSocket};

use super::*;

type Peer = WebSocket<rustls::StreamOwned<ServerConnection, TcpStream>>;

/// What one upgrade asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `local-proxy-mode`.
    pub mode: String,
    /// The `client-token` header, if any.
    pub client_token: Option<String>,
    /// The subprotocol chosen.
    pub protocol: String,
}

/// A running test relay; stops when dropped.
pub struct WsRelay {
    /// Where agents connect.
    pub addr: SocketAddr,
    /// Every upgrade accepted, in order.
    pub upgrades: Arc<Mutex<Vec<Upgrade>>>,
    /// Set to drop both peers' connections (without a close frame) once.
    pub kick: Arc<AtomicBool>,
    /// Set to send both peers a close frame (the tunnel closed) and drop them.
    pub close: Arc<AtomicBool>,
    /// Set to stop reading from the peers (no frame passed, no ping answered): a relay gone
    /// silent without a FIN.
    pub mute: Arc<AtomicBool>,
    /// Peers connected now (0 to 2). It drops what a peer sends while the other is away.
    pub connected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Drop for WsRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// SERVICE_IDS with `services`, as a tunnel frame (length prefix and protobuf `Message`).
pub fn service_ids_frame(services: &[&str]) -> Vec<u8> {
    let mut m = vec![0x08, 0x05];
    for s in services {
        m.push(0x32);
        m.push(s.len() as u8);
        m.extend_from_slice(s.as_bytes());
    }
    let mut frame = (m.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&m);
    frame
}

impl WsRelay {
    /// A relay presenting `leaf`, for a tunnel of `services`, speaking at most subprotocol
    /// version `max` (1 to 3).
    pub fn start(leaf: &Leaf, services: &[&str], max: u8) -> WsRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test relay");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("relay address");
        let tls = server_config(leaf, None, TLS_ANY);
        let stop = Arc::new(AtomicBool::new(false));
        let kick = Arc::new(AtomicBool::new(false));
        let close = Arc::new(AtomicBool::new(false));
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(AtomicUsize::new(0));
        let mute = Arc::new(AtomicBool::new(false));
        let services_frame = service_ids_frame(services);
        let (tx, rx) = mpsc::channel::<(String, Peer)>();
        let accept = {
            let (stop, upgrades) = (stop.clone(), upgrades.clone());
            spawn("ws-relay-accept", move || {
                while !stop.load(Ordering::SeqCst) {
                    let sock = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(_) => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    let (tls, tx, upgrades) = (tls.clone(), tx.clone(), upgrades.clone());
                    spawn("ws-relay-upgrade", move || {
                        if let Some((mode, peer)) = upgrade(sock, tls, max, &upgrades) {
                            let _ = tx.send((mode, peer));
                        }
                    });
                }
            })
        };
        let pump = {
            let (stop, kick, close) = (stop.clone(), kick.clone(), close.clone());
            let (connected, mute) = (connected.clone(), mute.clone());
            spawn("ws-relay-pump", move || {
                pump(rx, &services_frame, &stop, &kick, &close, &connected, &mute)
            })
        };
        WsRelay {
            addr,
            upgrades,
            kick,
            close,
            mute,
            connected,
            stop,
            threads: vec![accept, pump],
        }
    }
}

#[expect(
    clippy::result_large_err,
    reason = "the callback's type is tungstenite's"
)]
fn upgrade(
    sock: TcpStream,
    tls: Arc<ServerConfig>,
    max: u8,
    upgrades: &Mutex<Vec<Upgrade>>,
) -> Option<(String, Peer)> {
    sock.set_nonblocking(false).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    sock.set_nodelay(true).ok()?;
    let conn = ServerConnection::new(tls).ok()?;
    let stream = rustls::StreamOwned::new(conn, sock);
    let mut seen = None;
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let query = req.uri().query().unwrap_or("");
        let mode = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("local-proxy-mode="))
            .unwrap_or("")
            .to_string();
        let offered = header("sec-websocket-protocol").unwrap_or_default();
        let chosen = offered
            .split(',')
            .map(str::trim)
            .filter_map(|p| {
                let v = p
                    .strip_prefix("aws.iot.securetunneling-")?
                    .strip_suffix(".0")?
                    .parse::<u8>()
                    .ok()?;
                (v <= max).then(|| (v, p.to_string()))
            })
            .max();
        let Some((_, protocol)) = chosen else {
            let mut e = ErrorResponse::new(Some("no subprotocol".into()));
            *e.status_mut() = tungstenite::http::StatusCode::BAD_REQUEST;
            return Err(e);
        };
        resp.headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().expect("header"));
        seen = Some(Upgrade {
            mode,
            client_token: header("client-token"),
            protocol,
        });
        Ok(resp)
    };
    let ws = tungstenite::accept_hdr(stream, callback).ok()?;
    let up = seen?;
    let mode = up.mode.clone();
    upgrades.lock().expect("upgrades").push(up);
    ws.get_ref()
        .sock
        .set_read_timeout(Some(Duration::from_millis(1)))
        .ok()?;
    Some((mode, ws))
}

fn pump(
    rx: mpsc::Receiver<(String, Peer)>,
    services: &[u8],
    stop: &AtomicBool,
    kick: &AtomicBool,
    close: &AtomicBool,
    connected: &AtomicUsize,
    mute: &AtomicBool,
) {
    // [source, destination]
    let mut peers: [Option<Peer>; 2] = [None, None];
    while !stop.load(Ordering::SeqCst) {
        while let Ok((mode, mut ws)) = rx.try_recv() {
            let i = usize::from(mode == "destination");
            if ws.send(WsMessage::binary(services.to_vec())).is_ok() {
                peers[i] = Some(ws);
            }
        }
        if kick.swap(false, Ordering::SeqCst) {
            peers = [None, None];
        }
        if close.swap(false, Ordering::SeqCst) {
            for p in peers.iter_mut() {
                if let Some(mut ws) = p.take() {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                }
            }
        }
        connected.store(peers.iter().flatten().count(), Ordering::SeqCst);
        if mute.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        let mut idle = true;
        for i in 0..2 {
            let Some(ws) = peers[i].as_mut() else {
                continue;
            };
            match ws.read() {
                Ok(WsMessage::Binary(b)) => {
                    idle = false;
                    if let Some(other) = peers[1 - i].as_mut()
                        && other.send(WsMessage::Binary(b)).is_err()
                    {
                        peers[1 - i] = None;
                    }
                }
                Ok(_) => idle = false,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let _ = ws.flush();
                }
                Err(_) => peers[i] = None,
            }
        }
        if idle && peers.iter().all(Option::is_none) {
            thread::sleep(Duration::from_millis(2));
        }
    }
}
