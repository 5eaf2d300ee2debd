//! What the registry keeps about a tunnel: its configuration, its status, and per side
//! (source, destination) the hash of the current access token, how that token has been
//! used, and whether a peer is connected with it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::secret::TokenHash;

/// Milliseconds since the Unix epoch. The registry never reads a clock: every call that
/// depends on the time is given `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timestamp(pub(crate) u64);

impl Timestamp {
    /// The system clock now (for the API server, the registry's one caller with a clock).
    pub(crate) fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// `self` plus `seconds`, saturating.
    pub(crate) fn plus_seconds(self, seconds: u32) -> Self {
        Self(self.0.saturating_add(u64::from(seconds) * 1000))
    }

    /// Seconds since the epoch, as the AWS API writes its timestamps.
    pub(crate) fn epoch_seconds(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// Which end of a tunnel: the access token's mode (`local-proxy-mode=source|destination`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    Source,
    Destination,
}

impl Side {
    pub(crate) const BOTH: [Side; 2] = [Side::Source, Side::Destination];

    /// As in `local-proxy-mode` and in logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

/// How a tunnel's peers were paired: by its access tokens (the AWS way), by the client
/// certificates of both peers (the same identity), or for a thing whose device stands by
/// (its device certificate). Never holds a token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) enum Pairing {
    /// Opened by the API; each peer brings its side's access token.
    #[default]
    Token,
    /// Made by the relay when a peer with this client-certificate identity (a URI SAN, or
    /// the certificate's SHA-256 fingerprint in hex) came without a token.
    Certificate(String),
    /// Opened for the thing of this name, whose device in standby is told of it.
    Thing(String),
}

impl Pairing {
    /// `token`, `certificate` or `thing`: as the API, the store and the metrics write it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Pairing::Token => "token",
            Pairing::Certificate(_) => "certificate",
            Pairing::Thing(_) => "thing",
        }
    }

    /// Who: the certificate identity or the thing name; `None` for tokens.
    pub(crate) fn identity(&self) -> Option<&str> {
        match self {
            Pairing::Token => None,
            Pairing::Certificate(id) | Pairing::Thing(id) => Some(id),
        }
    }

    /// From [`Pairing::kind`] and [`Pairing::identity`]; `None` for a kind it does not know
    /// or one that needs an identity and has none.
    pub(crate) fn parse(kind: &str, identity: Option<String>) -> Option<Pairing> {
        match (kind, identity) {
            ("token", _) => Some(Pairing::Token),
            ("certificate", Some(id)) => Some(Pairing::Certificate(id)),
            ("thing", Some(id)) => Some(Pairing::Thing(id)),
            _ => None,
        }
    }
}

/// `OPEN` until closed by a call or by the end of its lifetime; then `CLOSED` for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TunnelStatus {
    Open,
    Closed,
}

impl TunnelStatus {
    /// As the AWS API writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TunnelStatus::Open => "OPEN",
            TunnelStatus::Closed => "CLOSED",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "OPEN" => Some(TunnelStatus::Open),
            "CLOSED" => Some(TunnelStatus::Closed),
            _ => None,
        }
    }
}

/// How the current access token of one side may still be used (reference §2: tokens are
/// single-use unless the first connection brought a client token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TokenUse {
    /// A peer has connected with it.
    pub(crate) used: bool,
    /// The client token it is bound to: by the first connection that brought one, or by a
    /// rotation that named one. Only that client token may use it (again).
    pub(crate) client: Option<TokenHash>,
}

/// One side of a tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    /// SHA-256 of the current access token.
    pub(crate) token: TokenHash,
    pub(crate) token_use: TokenUse,
    /// Whether a peer is connected on this side (`CONNECTED` / `DISCONNECTED`).
    pub(crate) connected: bool,
    /// When `connected` last changed (or the tunnel was opened).
    pub(crate) updated_at: Timestamp,
}

impl Peer {
    pub(crate) fn new(token: TokenHash, client: Option<TokenHash>, now: Timestamp) -> Self {
        Self {
            token,
            token_use: TokenUse {
                used: false,
                client,
            },
            connected: false,
            updated_at: now,
        }
    }
}

/// A tunnel as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tunnel {
    /// A UUID.
    pub(crate) id: String,
    pub(crate) description: Option<String>,
    /// `destinationConfig.thingName`.
    pub(crate) thing_name: Option<String>,
    /// `destinationConfig.services`, in the order given: what `SERVICE_IDS` carries.
    pub(crate) services: Vec<String>,
    /// The lifetime in seconds: `timeoutConfig.maxLifetimeTimeoutMinutes` times 60, or
    /// our `maxLifetimeTimeoutSeconds` (shorter lifetimes than AWS allows).
    pub(crate) lifetime_seconds: u32,
    pub(crate) status: TunnelStatus,
    pub(crate) created_at: Timestamp,
    pub(crate) last_updated_at: Timestamp,
    pub(crate) source: Peer,
    pub(crate) destination: Peer,
    /// How its peers are paired.
    pub(crate) pairing: Pairing,
}

impl Tunnel {
    pub(crate) fn peer(&self, side: Side) -> &Peer {
        match side {
            Side::Source => &self.source,
            Side::Destination => &self.destination,
        }
    }

    pub(crate) fn peer_mut(&mut self, side: Side) -> &mut Peer {
        match side {
            Side::Source => &mut self.source,
            Side::Destination => &mut self.destination,
        }
    }

    /// When its lifetime ends.
    pub(crate) fn expires_at(&self) -> Timestamp {
        self.created_at.plus_seconds(self.lifetime_seconds)
    }

    /// Open, and its lifetime not over at `now`.
    pub(crate) fn is_open_at(&self, now: Timestamp) -> bool {
        self.status == TunnelStatus::Open && now < self.expires_at()
    }
}
