//! A tunnel as the API's JSON shows it, with AWS's field names (`DescribeTunnel`'s `tunnel`,
//! `ListTunnels`' summaries): for the API and the console.

use serde_json::{Map, Value, json};

use super::tunnel::{Peer, Tunnel};

/// `DescribeTunnel`'s `tunnel`: everything but the tokens.
pub(super) fn tunnel_json(t: &Tunnel) -> Value {
    let state = |p: &Peer| {
        json!({
            "status": if p.connected { "CONNECTED" } else { "DISCONNECTED" },
            "lastUpdatedAt": p.updated_at.epoch_seconds(),
        })
    };
    let mut destination = Map::new();
    if let Some(thing) = &t.thing_name {
        destination.insert("thingName".into(), thing.as_str().into());
    }
    destination.insert("services".into(), t.services.clone().into());
    let mut v = summary_json(t);
    let o = v.as_object_mut().expect("an object");
    o.insert("sourceConnectionState".into(), state(&t.source));
    o.insert("destinationConnectionState".into(), state(&t.destination));
    o.insert("destinationConfig".into(), Value::Object(destination));
    o.insert(
        "timeoutConfig".into(),
        // AWS's field in whole minutes (a lifetime under one rounds up), and ours exact.
        json!({
            "maxLifetimeTimeoutMinutes": t.lifetime_seconds.div_ceil(60),
            "maxLifetimeTimeoutSeconds": t.lifetime_seconds,
        }),
    );
    v
}

/// `ListTunnels`' `TunnelSummary`.
pub(super) fn summary_json(t: &Tunnel) -> Value {
    let mut o = Map::new();
    o.insert("tunnelId".into(), t.id.as_str().into());
    o.insert("status".into(), t.status.as_str().into());
    if let Some(d) = &t.description {
        o.insert("description".into(), d.as_str().into());
    }
    // Not in AWS's answer: how a tunnel not paired by tokens was paired, and by whom
    // (a certificate identity or a thing name; never a token).
    if let Some(identity) = t.pairing.identity() {
        o.insert(
            "pairing".into(),
            json!({ "kind": t.pairing.kind(), "identity": identity }),
        );
    }
    o.insert("createdAt".into(), t.created_at.epoch_seconds().into());
    o.insert(
        "lastUpdatedAt".into(),
        t.last_updated_at.epoch_seconds().into(),
    );
    Value::Object(o)
}
