//! The kernel hand-off: once the handshake is over, the TLS leg's session keys go to the kernel
//! (kTLS) when it can take the negotiated cipher, and the splice pump replaces the record pump.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;

use splice_proto::Leg;

use super::super::Shard;
use super::splice::SplicePump;
use super::{Conn, Pump};
use crate::driver::Fd;
use crate::error::Side;
use crate::sys;

impl Conn {
    /// The handshake is over: give the session to the kernel if it can take this cipher.
    pub(super) fn handoff(&mut self, shard: &mut Shard) {
        let Some(tls_fd) = self.leg_fd(Leg::Tls) else {
            return;
        };
        let Pump::Records(sm) = &mut self.pump else {
            return;
        };
        let support = self.fwd.ktls.as_ref();
        self.negotiated = sm.negotiated().cloned().map(Box::new);
        let settled = sm.negotiated().map(|n| (n.suite, n.version));
        let (Some(support), Some((suite, version))) = (support, settled) else {
            sm.handle_handoff_declined();
            return;
        };
        if !support.supports(suite) {
            tracing::debug!(suite = ?suite.suite(), "kernel lacks this cipher; staying in user space");
            sm.handle_handoff_declined();
            return;
        }
        // The ULP is normally attached already; if not, attach it while the rustls session is
        // still ours, so that a refusal leaves the connection in user space.
        if !self.ulp_attached && !attach_ulp(&tls_fd) {
            sm.handle_handoff_declined();
            return;
        }
        let Pump::Records(sm) = std::mem::replace(&mut self.pump, Pump::Gone) else {
            unreachable!()
        };
        let plain_fd = self
            .leg_fd(Leg::Plain)
            .expect("the plain leg is open before the hand-off");
        let extracted = sm
            .into_tls()
            .ok_or_else(|| "rustls no longer has the session".to_string())
            .and_then(|tls| tls.dangerous_into_kernel().map_err(|e| e.to_string()));
        let (secrets, tickets) = match extracted {
            Ok(s) => s,
            Err(e) => {
                self.fail_now(Side::Tls, format!("extract secrets: {e}"));
                return;
            }
        };
        if let Err(e) = sys::ktls::enable_attached(tls_fd.as_fd(), version, secrets) {
            self.fail_now(Side::Internal, format!("kTLS hand-off: {e}"));
            return;
        }
        self.fwd.stats.ktls.fetch_add(1, Relaxed);
        let sides = (
            self.leg(Leg::Plain).role.side(),
            self.leg(Leg::Tls).role.side(),
        );
        let pump = match SplicePump::new(plain_fd, tls_fd, sides, version, tickets, shard) {
            Ok(p) => p,
            Err(e) => {
                self.fail_now(Side::Internal, format!("pipes: {e}"));
                return;
            }
        };
        // Bytes counted so far stay counted (the handshake moves none); the pump counts from zero.
        self.counted_in = 0;
        self.counted_out = 0;
        self.pump = Pump::Splice(Box::new(pump));
    }

    fn fail_now(&mut self, side: Side, reason: String) {
        self.pump = Pump::Splice(Box::new(SplicePump::failed(side, reason)));
    }
}

/// Attaches the kernel's `tls` ULP to a connected socket; false (logged) when the kernel refuses.
pub(super) fn attach_ulp(fd: &Fd) -> bool {
    match sys::ktls::attach(fd.as_fd()) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "kTLS not attached; this connection stays in user space");
            false
        }
    }
}
