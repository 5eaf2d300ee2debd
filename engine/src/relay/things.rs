//! Tunnels for things (issue 12 §2, docs/relay.md "Fleets"): what the control side tells the
//! data plane when a tunnel is opened with `destinationConfig.thingName`, so that the thing's
//! standby agents hear of it ([`crate::shard::tunnel::standby`]).
//!
//! The notice carries the destination token that the open's answer carries too: it is valid
//! until a standby agent of the thing connects while the tunnel's destination is not
//! connected, which rotates it (the registry keeps hashes only, so a token pushed later must
//! be a new one).

use splice_proto::tunnel::relay::notify::Notice;

use super::events::RelayEvent;
use super::registry::Opened;

/// The event for tunnel `o`, just opened for `thing` with `services`. The region is the
/// relay's name, filled in by the shards.
pub(crate) fn opened(thing: String, o: &Opened, services: Vec<String>) -> RelayEvent {
    RelayEvent::Notify {
        thing,
        notice: Box::new(Notice {
            tunnel_id: o.tunnel_id.clone(),
            client_access_token: o.destination_token.expose().to_string(),
            client_mode: "destination".into(),
            region: String::new(),
            services,
        }),
    }
}
