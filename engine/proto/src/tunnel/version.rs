//! Protocol versions (reference §6): which fields and types each sends and accepts.

use super::Type;

/// A version of the tunnel protocol, as the WebSocket subprotocol names it.
///
/// All three share one byte format; they differ in which fields and types a peer uses:
/// V1 has one stream and types 1 to 4 with no serviceId and no connectionId; V2 adds
/// SERVICE_IDS and serviceId (several services, one connection each at a time); V3 adds
/// CONNECTION_START / CONNECTION_RESET and connectionId (several connections per service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// `aws.iot.securetunneling-1.0`.
    V1,
    /// `aws.iot.securetunneling-2.0`.
    V2,
    /// `aws.iot.securetunneling-3.0`.
    V3,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1, Version::V2, Version::V3];

    /// The WebSocket subprotocol that names it.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Version::V1 => "aws.iot.securetunneling-1.0",
            Version::V2 => "aws.iot.securetunneling-2.0",
            Version::V3 => "aws.iot.securetunneling-3.0",
        }
    }

    /// The version a subprotocol names (exact, case-sensitive, as RFC 6455 compares them).
    pub fn from_subprotocol(name: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.subprotocol() == name)
    }

    /// Whether a peer of this version knows `kind` (so may neither drop nor refuse it).
    pub fn knows(self, kind: Type) -> bool {
        kind.since().is_some_and(|since| since <= self)
    }

    /// Whether this version writes serviceId (V2 and V3; a V1 peer leaves it out).
    pub fn writes_service_id(self) -> bool {
        self >= Version::V2
    }

    /// Whether this version writes connectionId and the CONNECTION_* types (V3 only; an older
    /// peer opens one stream per TCP connection with STREAM_START / STREAM_RESET).
    pub fn writes_connection_id(self) -> bool {
        self == Version::V3
    }

    /// The serviceId and connectionId to write to a peer of this version for a message of
    /// `service` and `connection`: what the version does not have becomes the proto3 default
    /// (left out on the wire).
    pub fn ids(self, service: &str, connection: u32) -> (&str, u32) {
        (
            if self.writes_service_id() {
                service
            } else {
                ""
            },
            if self.writes_connection_id() {
                connection
            } else {
                0
            },
        )
    }
}
