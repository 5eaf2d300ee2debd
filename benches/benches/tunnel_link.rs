//! A tunnel link's record path (`splice_proto::tunnel::link::Link`) in memory: what the relay
//! and the agents do per byte of a tunnel's data besides the socket calls, without the noise
//! of a network stack.
//!
//! `receive`: an agent's link sends 4 MiB as messages of 65,000 bytes (about what a source
//! frames from one 64 KiB read); the relay's side takes the records in 64 KiB pieces, as the
//! shards receive them, and copies each message out, as a destination does into a local
//! connection's buffer. It times the receiving side only (opening the records, the WebSocket
//! decoder, that copy); the sending side's work is done outside the timed part.
//!
//! `send`: see [`send`].
//!
//! Changes measured here, in alternating runs on the 2-core bench VM (TLS 1.3):
//! - A record cut by a receive used to send the whole next receive through a second buffer;
//!   now only the rest of that record goes there: `receive` from 3.2 and 3.4 GiB/s to 3.4
//!   and 4.0.
//! - A payload too big to seal where it lies was copied into room zeroed first; now it is
//!   copied into place once, without the zeroing: `send/64512` from 3.67 and 3.80 GiB/s to
//!   4.10 and 4.02.

#[allow(dead_code)] // shared with tls_forward; this bench takes only its configurations
mod common;
mod settings;

use std::time::{Duration, Instant};

use common::{Configs, Suite};
use criterion::{BenchmarkId, Criterion, Throughput};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use splice_proto::pool;
use splice_proto::tunnel::link::{Event, Link, SEND_HEADROOM, SEND_TAILROOM};
use splice_proto::ws::{AccessToken, ClientRequest, Mode, Subprotocol};

/// Bytes sent per iteration.
const TRANSFER: usize = 4 * 1024 * 1024;
/// One message's payload.
const MESSAGE: usize = 65_000;
/// What a shard asks for in one receive.
const RECEIVE: usize = 64 * 1024;

/// Both ends of a link, upgraded: the client as an agent, the server as the relay.
fn open(configs: &Configs) -> (Link, Link) {
    let (cc, sc) = configs.rustls();
    let name = ServerName::try_from("localhost").expect("server name");
    let token = AccessToken::new("b".repeat(40)).expect("token");
    let request = ClientRequest {
        host: "localhost",
        mode: Mode::Source,
        access_token: Some(&token),
        services: &[],
        client_token: None,
        protocols: &Subprotocol::ALL,
        key: [7; 16],
        user_agent: "splice-bench",
    };
    let mut client = Link::client(
        UnbufferedClientConnection::new(cc, name).expect("client connection"),
        &request,
        1,
    );
    let mut server = Link::server(UnbufferedServerConnection::new(sc).expect("server connection"));
    let mut upgraded = false;
    for _ in 0..20 {
        shuttle(&mut client, &mut server);
        if !upgraded && let Some(Event::Request(r)) = server.poll() {
            let response = r.accept_response("bench");
            server.accept(&response);
            upgraded = true;
        }
        if upgraded && matches!(client.poll(), Some(Event::Open(_))) {
            return (client, server);
        }
    }
    panic!("the link did not open");
}

/// Hands each side's output to the other once.
fn shuttle(a: &mut Link, b: &mut Link) {
    let mut buf = Vec::new();
    a.take_output(&mut buf);
    b.receive_tls(&buf).expect("client to server");
    b.take_output(&mut buf);
    a.receive_tls(&buf).expect("server to client");
}

fn receive(c: &mut Criterion) {
    let payload = common::payload(MESSAGE);
    let messages = TRANSFER / MESSAGE;
    let mut group = c.benchmark_group("tunnel_link/receive");
    group.throughput(Throughput::Bytes((messages * MESSAGE) as u64));
    for suite in Suite::ALL {
        let (mut client, mut server) = open(&Configs::new(suite));
        let mut wire = Vec::new();
        let mut out = Vec::with_capacity(MESSAGE);
        group.bench_function(BenchmarkId::from_parameter(suite.name()), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..messages {
                        client.send_message(&payload);
                    }
                    client.take_output(&mut wire);
                    let start = Instant::now();
                    let mut got = 0;
                    for piece in wire.chunks(RECEIVE) {
                        server.receive_tls(piece).expect("records open");
                        while let Some(Event::Message(m)) = server.poll() {
                            out.clear();
                            out.extend_from_slice(m);
                            got += 1;
                        }
                    }
                    timed += start.elapsed();
                    assert_eq!((got, out.as_slice()), (messages, &payload[..]));
                }
                timed
            });
        });
    }
    group.finish();
}

/// `send`: an agent's link frames and seals payloads of 64,512 bytes (a source's local read,
/// the most a DATA message holds) read after [`SEND_HEADROOM`] bytes, as a source sends them
/// ([`Link::send_in_place`]), and of 16,000 (small enough to seal where they lie); the
/// relay's side opens them outside the timed part.
fn send(c: &mut Criterion) {
    let mut group = c.benchmark_group("tunnel_link/send");
    for size in [64_512, 16_000] {
        let payload = common::payload(size);
        let messages = TRANSFER / size;
        group.throughput(Throughput::Bytes((messages * size) as u64));
        let (mut client, mut server) = open(&Configs::new(Suite::Tls13Aes128Gcm));
        let mut wire = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let mut sent = Vec::with_capacity(messages);
                    let start = Instant::now();
                    for _ in 0..messages {
                        let mut buf = pool::take(SEND_HEADROOM + size + SEND_TAILROOM);
                        buf.resize(SEND_HEADROOM, 0);
                        buf.extend_from_slice(&payload);
                        client.send_in_place(buf, SEND_HEADROOM..SEND_HEADROOM + size);
                        // Taken as a shard takes each message's records to send them
                        // before the next read: the buffer, not a copy.
                        let mut out = Vec::new();
                        let at = client.take_output_at(&mut out);
                        sent.push((out, at));
                    }
                    timed += start.elapsed();
                    wire.clear();
                    for (out, at) in sent {
                        wire.extend_from_slice(&out[at..]);
                        pool::give(out);
                    }
                    let mut got = 0;
                    for piece in wire.chunks(RECEIVE) {
                        server.receive_tls(piece).expect("records open");
                        while let Some(Event::Message(m)) = server.poll() {
                            assert_eq!(m, &payload[..]);
                            got += 1;
                        }
                    }
                    assert_eq!(got, messages);
                }
                timed
            });
        });
    }
    group.finish();
}

fn main() {
    let mut c = settings::criterion(4, 20);
    receive(&mut c);
    send(&mut c);
    c.final_summary();
}
