//! A source and a destination through a relay that passes frames, driven by a seeded random
//! schedule: accepts, local reads and closes on both sides, connects that succeed or fail,
//! slow local writers, tunnel bytes cut anywhere and delivered late (so resets cross DATA in
//! flight), and tunnel drops; with half-close on, local EOFs (and the wait for the peer's
//! HELLO) too. Whatever happens, each local connection receives a prefix of what its peer
//! sent, in order, from one peer only, and nothing after its write side was shut; and once
//! everything settles, every pair still open has received everything, and a shut write side
//! had everything its peer sent before its EOF.

use std::collections::{HashMap, VecDeque};

use super::*;
use crate::test_rng::Rng;
use crate::tunnel::{Message, Type};

impl Rng {
    fn chance(&mut self, per_mille: usize) -> bool {
        self.below(1000) < per_mille
    }
}

/// Byte `at` of the stream a local end with `tag` writes: the tag first, then a pattern.
fn byte(tag: u32, at: usize) -> u8 {
    if at < 4 {
        tag.to_le_bytes()[at]
    } else {
        (tag as usize * 131 + at * 7 + (at >> 9)) as u8
    }
}

#[derive(Default)]
struct End {
    tag: u32,
    sent: usize,
    got: Vec<u8>,
    /// Write actions not yet taken by the (slow) local end.
    to_write: VecDeque<Vec<u8>>,
    closed: bool,
    /// The agent finished it (the peer closed): it is closed once `to_write` is taken.
    finished: bool,
    connected: bool,
    /// It sent its EOF (half-close): it writes no more.
    eof: bool,
    /// The agent shut its write side (the peer half-closed): nothing more may come.
    shut: bool,
}

impl End {
    fn got_tag(&self) -> Option<u32> {
        let b = self.got.get(..4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

struct Sim {
    rng: Rng,
    services: Vec<&'static str>,
    src: Source,
    dst: Destination,
    src_ends: HashMap<LocalId, End>,
    dst_ends: HashMap<LocalId, End>,
    to_dst: VecDeque<u8>,
    to_src: VecDeque<u8>,
    src_paused: bool,
    dst_paused: bool,
    next_tag: u32,
    errors: usize,
    /// `settle` ran the EOF waits out.
    settled_waits: bool,
}

impl Sim {
    fn ids(&self) -> Vec<u8> {
        let mut f = Vec::new();
        Message {
            kind: Type::SERVICE_IDS,
            available_service_ids: self.services.clone(),
            ..Message::default()
        }
        .append_frame(&mut f)
        .unwrap();
        f
    }

    fn tunnel_lost(&mut self) {
        self.src.handle_tunnel_lost();
        self.dst.handle_tunnel_lost();
        self.to_dst.clear();
        self.to_src.clear();
        let ids = self.ids();
        self.to_src.extend(&ids);
        self.to_dst.extend(&ids);
    }

    fn take_actions(&mut self) {
        while let Some(action) = self.src.poll_action() {
            match action {
                Action::Send(f) => self.to_dst.extend(f),
                Action::Listen { .. } => {}
                Action::Write { local, data } => {
                    let end = self.src_ends.get_mut(&local).unwrap();
                    assert!(!end.shut, "a write after the write side was shut");
                    end.to_write.push_back(data);
                }
                Action::Close { local } => {
                    let end = self.src_ends.get_mut(&local).unwrap();
                    assert!(!end.closed, "closed twice");
                    end.closed = true;
                    end.to_write.clear();
                }
                Action::Finish { local } => {
                    let end = self.src_ends.get_mut(&local).unwrap();
                    assert!(!end.closed, "finished when closed");
                    (end.closed, end.finished) = (true, true);
                }
                Action::PauseTunnelReads => self.src_paused = true,
                Action::ResumeTunnelReads => self.src_paused = false,
                Action::Connect { .. } => panic!("a source connects nowhere"),
                Action::ShutdownWrite { local } => {
                    let end = self.src_ends.get_mut(&local).unwrap();
                    assert!(!end.closed && !end.shut, "shut when closed or shut");
                    end.shut = true;
                }
            }
        }
        while let Some(action) = self.dst.poll_action() {
            match action {
                Action::Send(f) => self.to_src.extend(f),
                Action::Connect { local, .. } => {
                    self.next_tag += 1;
                    let end = End {
                        tag: self.next_tag,
                        ..End::default()
                    };
                    assert!(self.dst_ends.insert(local, end).is_none());
                }
                Action::Write { local, data } => {
                    let end = self.dst_ends.get_mut(&local).unwrap();
                    assert!(!end.shut, "a write after the write side was shut");
                    end.to_write.push_back(data);
                }
                Action::Close { local } => {
                    let end = self.dst_ends.get_mut(&local).unwrap();
                    assert!(!end.closed, "closed twice");
                    end.closed = true;
                    end.to_write.clear();
                }
                Action::Finish { local } => {
                    let end = self.dst_ends.get_mut(&local).unwrap();
                    assert!(!end.closed, "finished when closed");
                    (end.closed, end.finished) = (true, true);
                }
                Action::PauseTunnelReads => self.dst_paused = true,
                Action::ResumeTunnelReads => self.dst_paused = false,
                Action::Listen { .. } => panic!("a destination listens nowhere"),
                Action::ShutdownWrite { local } => {
                    let end = self.dst_ends.get_mut(&local).unwrap();
                    assert!(!end.closed && !end.shut, "shut when closed or shut");
                    end.shut = true;
                }
            }
        }
    }

    /// Moves up to `max` bytes of the tunnel one way; returns whether any moved.
    fn carry(&mut self, to_dst: bool, max: usize) -> bool {
        let (queue, paused) = if to_dst {
            (&mut self.to_dst, self.dst_paused)
        } else {
            (&mut self.to_src, self.src_paused)
        };
        if paused || queue.is_empty() {
            return false;
        }
        let n = max.min(queue.len());
        let bytes: Vec<u8> = queue.drain(..n).collect();
        let result = if to_dst {
            self.dst.handle_tunnel_bytes(&bytes)
        } else {
            self.src.handle_tunnel_bytes(&bytes)
        };
        if let Err(e) = result {
            assert!(e.is_fatal());
            self.errors += 1;
            self.take_actions();
            self.tunnel_lost();
        }
        true
    }

    /// A local end writes `n` more bytes of its stream to the agent.
    fn local_data(&mut self, src: bool, local: LocalId, n: usize) {
        let end = if src {
            self.src_ends.get_mut(&local).unwrap()
        } else {
            self.dst_ends.get_mut(&local).unwrap()
        };
        let data: Vec<u8> = (end.sent..end.sent + n).map(|i| byte(end.tag, i)).collect();
        end.sent += n;
        if src {
            self.src.handle_local_data(local, &data);
        } else {
            self.dst.handle_local_data(local, &data);
        }
    }

    /// A local end sends its EOF (it writes no more; the agent says what becomes of it).
    fn local_eof(&mut self, src: bool, local: LocalId) {
        let end = if src {
            self.src_ends.get_mut(&local).unwrap()
        } else {
            self.dst_ends.get_mut(&local).unwrap()
        };
        end.eof = true;
        if src {
            self.src.handle_local_eof(local);
        } else {
            self.dst.handle_local_eof(local);
        }
    }

    /// [`EOF_WAIT`] passes for every local EOF of one side (a no-op for those settled).
    fn eof_waits_over(&mut self, src: bool) {
        let ends = if src { &self.src_ends } else { &self.dst_ends };
        for local in Self::open(ends, |e| e.eof) {
            if src {
                self.src.handle_eof_wait_over(local);
            } else {
                self.dst.handle_eof_wait_over(local);
            }
        }
    }

    /// The local end takes up to `max` bytes of what the agent wrote to it.
    fn local_takes(&mut self, src: bool, local: LocalId, max: usize) -> bool {
        let end = if src {
            self.src_ends.get_mut(&local).unwrap()
        } else {
            self.dst_ends.get_mut(&local).unwrap()
        };
        let Some(mut front) = end.to_write.pop_front() else {
            return false;
        };
        let n = front.len().min(max);
        end.got.extend_from_slice(&front[..n]);
        if n < front.len() {
            front.drain(..n);
            end.to_write.push_front(front);
        }
        if src {
            self.src.handle_written(local, n);
        } else {
            self.dst.handle_written(local, n);
        }
        true
    }

    fn open(ends: &HashMap<LocalId, End>, pick: impl Fn(&End) -> bool) -> Vec<LocalId> {
        Self::any(ends, |e| !e.closed && pick(e))
    }

    fn any(ends: &HashMap<LocalId, End>, pick: impl Fn(&End) -> bool) -> Vec<LocalId> {
        let mut ids: Vec<LocalId> = (ends.iter())
            .filter(|(_, e)| pick(e))
            .map(|(&id, _)| id)
            .collect();
        ids.sort();
        ids
    }

    fn step(&mut self) {
        let rng = &mut self.rng;
        let what = rng.below(100);
        let size = if rng.chance(50) {
            70_000 + rng.below(70_000)
        } else {
            1 + rng.below(3000)
        };
        let src_open = Self::open(&self.src_ends, |e| !e.eof);
        let dst_up = Self::open(&self.dst_ends, |e| e.connected && !e.eof);
        let dst_waiting = Self::open(&self.dst_ends, |e| !e.connected);
        match what {
            0..=7 => {
                let service = self.services[self.rng.below(self.services.len())];
                if let Ok(local) = self.src.handle_accept(service) {
                    self.next_tag += 1;
                    let end = End {
                        tag: self.next_tag,
                        ..End::default()
                    };
                    self.src_ends.insert(local, end);
                    self.local_data(true, local, 4);
                }
            }
            8..=27 if !src_open.is_empty() => {
                let local = src_open[self.rng.below(src_open.len())];
                self.local_data(true, local, size);
            }
            28..=30 if !src_open.is_empty() => {
                let local = src_open[self.rng.below(src_open.len())];
                if self.rng.chance(500) {
                    self.local_eof(true, local);
                } else {
                    self.src_ends.get_mut(&local).unwrap().closed = true;
                    self.src.handle_local_closed(local);
                }
            }
            31..=38 if !dst_waiting.is_empty() => {
                let local = dst_waiting[self.rng.below(dst_waiting.len())];
                if self.rng.chance(900) {
                    self.dst_ends.get_mut(&local).unwrap().connected = true;
                    self.dst.handle_connected(local);
                    self.local_data(false, local, 4);
                } else {
                    self.dst_ends.get_mut(&local).unwrap().closed = true;
                    self.dst.handle_connect_failed(local);
                }
            }
            39..=52 if !dst_up.is_empty() => {
                let local = dst_up[self.rng.below(dst_up.len())];
                self.local_data(false, local, size);
            }
            53..=54 if !dst_up.is_empty() => {
                let local = dst_up[self.rng.below(dst_up.len())];
                if self.rng.chance(500) {
                    self.local_eof(false, local);
                } else {
                    self.dst_ends.get_mut(&local).unwrap().closed = true;
                    self.dst.handle_local_closed(local);
                }
            }
            55..=70 => {
                let max = 1 + self.rng.below(40_000);
                let to_dst = self.rng.chance(500);
                self.carry(to_dst, max);
            }
            71..=98 => {
                let src = self.rng.chance(500);
                let ends = if src { &self.src_ends } else { &self.dst_ends };
                let open = Self::any(ends, |e| !e.to_write.is_empty());
                if !open.is_empty() {
                    let local = open[self.rng.below(open.len())];
                    let max = 1 + self.rng.below(8000);
                    self.local_takes(src, local, max);
                }
            }
            99 if self.rng.chance(100) => self.tunnel_lost(),
            99 => {
                let src = self.rng.chance(500);
                self.eof_waits_over(src);
            }
            _ => {}
        }
        self.take_actions();
    }

    /// Everything settles: connects succeed, the tunnel and the local ends take all.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for local in Self::open(&self.dst_ends, |e| !e.connected) {
                self.dst_ends.get_mut(&local).unwrap().connected = true;
                self.dst.handle_connected(local);
                self.local_data(false, local, 4);
                moved = true;
            }
            self.take_actions();
            moved |= self.carry(true, usize::MAX);
            self.take_actions();
            moved |= self.carry(false, usize::MAX);
            self.take_actions();
            for src in [true, false] {
                let ends = if src { &self.src_ends } else { &self.dst_ends };
                for local in Self::any(ends, |e| !e.to_write.is_empty()) {
                    while self.local_takes(src, local, usize::MAX) {}
                    moved = true;
                }
                self.take_actions();
            }
            if !moved {
                if self.settled_waits {
                    return;
                }
                // Then the EOF waits run out (each side's timer), and it settles again.
                self.settled_waits = true;
                self.eof_waits_over(true);
                self.eof_waits_over(false);
                self.take_actions();
            }
        }
    }

    fn check(&self, what: &str) {
        let tags = |ends: &HashMap<LocalId, End>| -> HashMap<u32, LocalId> {
            ends.iter().map(|(&id, e)| (e.tag, id)).collect()
        };
        let (src_tags, dst_tags) = (tags(&self.src_ends), tags(&self.dst_ends));
        for (here, there, there_tags) in [
            (&self.src_ends, &self.dst_ends, &dst_tags),
            (&self.dst_ends, &self.src_ends, &src_tags),
        ] {
            for (id, end) in here {
                let Some(tag) = end.got_tag() else {
                    // Bytes but not the header yet are a prefix of the header: ruled out by
                    // the peer's first write being its 4-byte header.
                    assert!(end.got.is_empty() || end.got.len() < 4, "{what} {id}");
                    continue;
                };
                let peer = &there[there_tags
                    .get(&tag)
                    .unwrap_or_else(|| panic!("{what}: {id} got bytes of an unknown tag {tag}"))];
                assert!(
                    end.got.len() <= peer.sent,
                    "{what}: {id} got more than sent"
                );
                for (at, &b) in end.got.iter().enumerate() {
                    assert_eq!(b, byte(tag, at), "{what}: {id} byte {at} out of order");
                }
                if let Some(back) = peer.got_tag() {
                    assert_eq!(back, end.tag, "{what}: {id} and its peer disagree");
                }
                // (An end finished after its own EOF went out as a reset may be short: without
                // half-close the other direction ends there.)
                if end.finished && (!end.eof || end.shut) {
                    assert_eq!(end.got.len(), peer.sent, "{what}: {id} finished short");
                }
                assert!(
                    !end.shut || peer.eof,
                    "{what}: {id} shut, its peer did not end"
                );
                // Unless it was cut (a reset) since.
                if end.shut && (!end.closed || end.finished) {
                    assert_eq!(end.got.len(), peer.sent, "{what}: {id} shut short");
                }
                if !end.closed {
                    assert!(!peer.closed, "{what}: {id} open, its peer closed");
                    assert_eq!(end.got.len(), peer.sent, "{what}: {id} is missing bytes");
                }
            }
            for (id, end) in here {
                if !end.closed {
                    assert!(end.got_tag().is_some(), "{what}: {id} open without a peer");
                }
            }
        }
        assert!(!self.src.is_paused() && !self.dst.is_paused(), "{what}");
    }
}

#[test]
fn random_schedules_keep_every_byte_in_order_or_reset() {
    let (mut runs, mut half_closed) = (0, 0);
    for src in Version::ALL {
        for dst in Version::ALL {
            let services = if src == Version::V1 || dst == Version::V1 {
                vec!["SSH1"]
            } else {
                vec!["SSH1", "HTTP"]
            };
            let runs_of = |s| {
                [(s, false)]
                    .into_iter()
                    .chain((s <= 4).then_some((s, true)))
            };
            for (seed, half_close) in (1..=8u64).flat_map(runs_of) {
                let limits = Limits {
                    pending: 16 * 1024,
                    connections_per_service: 6,
                    half_close,
                    ..Limits::default()
                };
                let names = &services;
                let mut sim = Sim {
                    rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    src: Source::new(names, src, limits).unwrap(),
                    dst: Destination::new(names, dst, limits).unwrap(),
                    services: names.clone(),
                    src_ends: HashMap::new(),
                    dst_ends: HashMap::new(),
                    to_dst: VecDeque::new(),
                    to_src: VecDeque::new(),
                    src_paused: false,
                    dst_paused: false,
                    next_tag: 0,
                    errors: 0,
                    settled_waits: false,
                };
                sim.tunnel_lost();
                sim.take_actions();
                for _ in 0..1500 {
                    sim.step();
                }
                sim.settle();
                let what = format!("{src:?}->{dst:?} seed {seed} half-close {half_close}");
                sim.check(&what);
                if src <= dst {
                    assert_eq!(sim.errors, 0, "{what}");
                }
                runs += sim.src_ends.len();
                half_closed += (sim.src_ends.values())
                    .chain(sim.dst_ends.values())
                    .filter(|e| e.shut)
                    .count();
            }
        }
    }
    assert!(runs > 1000, "{runs} local connections in all");
    assert!(half_closed > 50, "{half_closed} write sides shut in all");
}
