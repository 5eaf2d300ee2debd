//! The PROXY protocol (HAProxy's, versions 1 and 2): a header a load balancer puts in front of
//! a TCP stream to say which client the stream came from.
//!
//! [`parse`] reads a header from the first bytes of a connection, strictly: a v1 line of at
//! most 107 bytes ending in CRLF, or a v2 binary header with its 12-byte signature, whose
//! lengths, families and TLV framing must all add up. Anything else is an error, never a guess.
//! It never reads past the header, so the bytes after it stay the application's. [`encode`]
//! writes a header. Neither does I/O; neither panics on any input.
//!
//! The specification is HAProxy's `doc/proxy-protocol.txt`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// The v2 signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 header, CRLF included.
pub const V1_MAX_LEN: usize = 107;

/// The longest v2 header: 16 fixed bytes and a 16-bit length.
pub const V2_MAX_LEN: usize = 16 + 0xffff;

const V1_PREFIX: &[u8] = b"PROXY ";

/// A protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text form (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary form.
    V2,
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// v2 `LOCAL`: the sender's own connection (a health check); use the real addresses.
    Local,
    /// v1 `UNKNOWN`, or a v2 `PROXY` of an unspecified or unix family: proxied, but from an
    /// address we cannot represent; use the real addresses.
    Unknown,
    /// A TCP connection over IPv4 or IPv6.
    Tcp {
        /// The client's address.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which version it was.
    pub version: Version,
    /// What it carried (v2 TLVs are checked for framing, then ignored).
    pub addresses: Addresses,
}

/// What [`parse`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes so far are a valid start of a header, and every one of them belongs to it.
    /// At most `at_most` more bytes belong to it too.
    Incomplete {
        /// An upper bound on the header's remaining bytes.
        at_most: usize,
    },
    /// A whole header: the first `len` bytes. The rest is the connection's data.
    Complete {
        /// The header.
        header: Header,
        /// Its length in bytes.
        len: usize,
    },
}

/// Why bytes are not a PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Neither `PROXY ` nor the v2 signature.
    #[error("not a PROXY protocol header (starts with {0})")]
    NotProxy(String),
    /// A v1 line without CRLF in its first 107 bytes.
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    /// A v1 line of the wrong shape.
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    /// A v2 version nibble other than 2.
    #[error("PROXY v2 header with version {0} (expected 2)")]
    V2Version(u8),
    /// A v2 command other than LOCAL (0) or PROXY (1).
    #[error("PROXY v2 header with unknown command {0}")]
    V2Command(u8),
    /// A v2 family or transport we do not accept.
    #[error("PROXY v2 header with unsupported family/transport byte {0:#04x}")]
    V2Family(u8),
    /// A v2 length too short for its family, or TLVs that overrun it.
    #[error("PROXY v2 header lengths do not add up: {0}")]
    V2Length(&'static str),
}

/// Parses the header at the start of `buf` (which may hold only its first bytes).
///
/// Rejects as early as it can: the first byte that cannot begin a header is an error, so
/// a peer that sends TLS or plain data instead is refused at once.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete {
            at_most: V2_MAX_LEN,
        });
    };
    if first == V1_PREFIX[0] {
        parse_v1(buf)
    } else if first == V2_SIGNATURE[0] {
        parse_v2(buf)
    } else {
        Err(not_proxy(buf))
    }
}

fn not_proxy(buf: &[u8]) -> ProxyError {
    let shown: String = buf.iter().take(8).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    ProxyError::NotProxy(format!("0x{shown}"))
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(not_proxy(buf));
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        return Ok(Parsed::Incomplete {
            at_most: V1_MAX_LEN - buf.len(),
        });
    };
    if window[cr] == b'\n' {
        return Err(ProxyError::V1Malformed("line ends in LF without CR"));
    }
    if cr + 1 >= V1_MAX_LEN {
        return Err(ProxyError::V1TooLong);
    }
    match window.get(cr + 1) {
        None => return Ok(Parsed::Incomplete { at_most: 1 }),
        Some(b'\n') => {}
        _ => return Err(ProxyError::V1Malformed("CR not followed by LF")),
    }
    if cr < V1_PREFIX.len() {
        return Err(ProxyError::V1Malformed("no protocol"));
    }
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..cr])
        .map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let len = cr + 2;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // The spec: whatever follows UNKNOWN up to the CRLF is to be ignored.
        return Ok(complete(Version::V1, Addresses::Unknown, len));
    }
    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or("");
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1Malformed(
            "expected four fields after the protocol, one space apart",
        ));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        if v6 {
            s.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| ProxyError::V1Malformed("bad IPv6 address"))
        } else {
            s.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| ProxyError::V1Malformed("bad IPv4 address"))
        }
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(complete(
        Version::V1,
        Addresses::Tcp {
            source,
            destination,
        },
        len,
    ))
}

fn port(s: &str) -> Result<u16, ProxyError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if !digits || leading_zero {
        return Err(ProxyError::V1Malformed("bad port"));
    }
    s.parse()
        .map_err(|_| ProxyError::V1Malformed("port above 65535"))
}

fn complete(version: Version, addresses: Addresses, len: usize) -> Parsed {
    Parsed::Complete {
        header: Header { version, addresses },
        len,
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(not_proxy(buf));
    }
    let Some(fixed) = buf.get(..16) else {
        // The length is not known yet; the header cannot be longer than this.
        return Ok(Parsed::Incomplete {
            at_most: V2_MAX_LEN - buf.len(),
        });
    };
    let ver_cmd = fixed[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(ProxyError::V2Command(c)),
    };
    let fam = fixed[13];
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let total = 16 + len;
    let Some(body) = buf.get(16..total) else {
        return Ok(Parsed::Incomplete {
            at_most: total - buf.len(),
        });
    };
    if local {
        // The spec: a receiver must ignore the family and the address block of a LOCAL.
        return Ok(complete(Version::V2, Addresses::Local, total));
    }
    let (addr_len, addresses) = match fam {
        // UNSPEC family (any transport): nothing to read.
        0x00..=0x02 => (0, Addresses::Unknown),
        // TCP over IPv4, IPv6; the unix family (stream) is proxied but not representable.
        0x11 => (12, Addresses::Unknown),
        0x21 => (36, Addresses::Unknown),
        0x31 => (216, Addresses::Unknown),
        other => return Err(ProxyError::V2Family(other)),
    };
    if body.len() < addr_len {
        return Err(ProxyError::V2Length(
            "shorter than its address family needs",
        ));
    }
    let addresses = match fam {
        0x11 => {
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[o],
                    body[o + 1],
                    body[o + 2],
                    body[o + 3],
                ))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Addresses::Tcp {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        0x21 => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&body[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Addresses::Tcp {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        _ => addresses,
    };
    // TLVs: type (1), length (2), value; they must fill the rest exactly.
    let mut tlvs = &body[addr_len..];
    while !tlvs.is_empty() {
        let [_, hi, lo, rest @ ..] = tlvs else {
            return Err(ProxyError::V2Length("a TLV header is cut"));
        };
        let n = usize::from(u16::from_be_bytes([*hi, *lo]));
        if rest.len() < n {
            return Err(ProxyError::V2Length("a TLV runs past the header"));
        }
        tlvs = &rest[n..];
    }
    Ok(complete(Version::V2, addresses, total))
}

/// Writes a header of `version` carrying `addresses`.
///
/// Mixed families (an IPv4 source to an IPv6 destination, or the reverse) are written as
/// IPv6 with the IPv4 address mapped (`::ffff:a.b.c.d`), since both forms need one family.
/// v1 writes `Local` as `UNKNOWN`, which it has no other word for.
pub fn encode(version: Version, addresses: &Addresses) -> Vec<u8> {
    let tcp = match *addresses {
        Addresses::Tcp {
            source,
            destination,
        } => Some(same_family(source, destination)),
        _ => None,
    };
    match version {
        Version::V1 => match tcp {
            None => b"PROXY UNKNOWN\r\n".to_vec(),
            Some((s, d)) => {
                let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {proto} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                )
                .into_bytes()
            }
        },
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            let cmd = if *addresses == Addresses::Local {
                0x20
            } else {
                0x21
            };
            out.push(cmd);
            match tcp {
                None => out.extend_from_slice(&[0x00, 0, 0]),
                Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                Some((s, d)) => {
                    let v6 = |a: SocketAddr| match a.ip() {
                        IpAddr::V6(ip) => ip.octets(),
                        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                    };
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&v6(s));
                    out.extend_from_slice(&v6(d));
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            out
        }
    }
}

/// The pair in one family: unchanged when they share one, else both as IPv6.
fn same_family(s: SocketAddr, d: SocketAddr) -> (SocketAddr, SocketAddr) {
    if s.is_ipv4() == d.is_ipv4() {
        return (s, d);
    }
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        v6 => v6,
    };
    (v6(s), v6(d))
}
