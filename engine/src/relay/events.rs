//! What a relay's control side tells its data plane: a tunnel closed (by the API or at
//! expiry) or its tokens rotated ([`RelayEvent`]), through the hook the data plane sets
//! ([`Events`]), which also holds the per-tunnel counters whose entry goes at close.

use std::sync::{Arc, RwLock};

use super::counters::PerTunnel;
use super::registry::{Registry, RegistryError, RotateSides};
use super::tunnel::Timestamp;

/// What the data plane must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RelayEvent {
    /// The tunnel was closed (by the API, or `expired`: its lifetime ended): both peers get a
    /// WebSocket close frame.
    Closed { tunnel_id: String, expired: bool },
    /// New access tokens for `sides`: peers connected with the old ones must be dropped.
    Rotated {
        tunnel_id: String,
        sides: RotateSides,
    },
    /// A tunnel was opened for `thing`: its standby agents get `notice` (which carries the
    /// destination token: its `Debug` hides it).
    Notify {
        thing: String,
        notice: Box<splice_proto::tunnel::relay::notify::Notice>,
    },
}

/// The event hook, shared by the API's handlers and the expiry timer; set once the data
/// plane is there to take the events (until then they are only logged).
pub(crate) type EventHook = Box<dyn Fn(RelayEvent) + Send + Sync>;

/// Where events go: empty until [`RelayService::set_events`]; and the per-tunnel counters,
/// whose entry goes when its tunnel closes.
#[derive(Default)]
pub(crate) struct Events(RwLock<Option<EventHook>>, Arc<PerTunnel>);

impl Events {
    /// Hands `event` to the hook, if one is set.
    pub(crate) fn emit(&self, event: RelayEvent) {
        tracing::debug!(?event, "relay event");
        if let RelayEvent::Closed { tunnel_id, .. } = &event {
            self.1.forget(tunnel_id);
        }
        let hook = self.0.read().unwrap_or_else(|p| p.into_inner());
        if let Some(hook) = hook.as_ref() {
            hook(event);
        }
    }

    pub(crate) fn set(&self, hook: EventHook) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Closes the tunnels whose lifetime ended and says so for each. Listing or describing
    /// would close them; close them here first, so that the data plane hears of each (the
    /// expiry timer would not see them again).
    pub(crate) fn expire(&self, registry: &Registry, now: Timestamp) -> Result<(), RegistryError> {
        for tunnel_id in registry.expire(now)? {
            tracing::info!(tunnel = %tunnel_id, "tunnel expired");
            self.emit(RelayEvent::Closed {
                tunnel_id,
                expired: true,
            });
        }
        Ok(())
    }

    /// The relay's per-tunnel counters.
    pub(crate) fn counters(&self) -> &Arc<PerTunnel> {
        &self.1
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}
