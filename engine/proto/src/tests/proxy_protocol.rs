//! The PROXY protocol codec: the specification's examples, the limits it sets, round trips,
//! and arbitrary input (no panic, no read past the header).

use std::net::SocketAddr;

use crate::proxy_protocol::{
    Addresses, Header, Parsed, ProxyError, V1_MAX_LEN, V2_SIGNATURE, Version, encode, parse,
};

fn complete(buf: &[u8]) -> (Header, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { header, len }) => (header, len),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn tcp(s: &str, d: &str) -> Addresses {
    Addresses::Tcp {
        source: s.parse().unwrap(),
        destination: d.parse().unwrap(),
    }
}

#[test]
fn spec_v1_examples() {
    // From section 2.1 of the specification.
    let cases: &[(&str, Addresses)] = &[
        (
            "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
            tcp("255.255.255.255:65535", "255.255.255.255:65535"),
        ),
        (
            "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            tcp(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        ),
        ("PROXY UNKNOWN\r\n", Addresses::Unknown),
        (
            "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            Addresses::Unknown,
        ),
        (
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            tcp("192.168.0.1:56324", "192.168.0.11:443"),
        ),
    ];
    for (line, want) in cases {
        let mut buf = line.as_bytes().to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (h, len) = complete(&buf);
        assert_eq!(h.version, Version::V1);
        assert_eq!(&h.addresses, want, "{line:?}");
        assert_eq!(len, line.len());
        assert!(len <= V1_MAX_LEN);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..line.len() {
            assert!(
                matches!(parse(&buf[..cut]), Ok(Parsed::Incomplete { at_most }) if at_most >= line.len() - cut),
                "{line:?} cut at {cut}"
            );
        }
    }
    // The longest possible line is exactly the limit.
    assert_eq!(cases[3].0.len(), V1_MAX_LEN);
}

#[test]
fn v1_rejects() {
    let bad: &[(&[u8], &str)] = &[
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR not followed"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "four fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "four fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "four fields"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "IPv4"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "IPv6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
        (b"PROXY \r\n", "protocol"),
        (b"PROXY\r\n", "not a PROXY"),
        (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            "not a PROXY",
        ),
        (b"GET / HTTP/1.1\r\n", "not a PROXY"),
    ];
    for (input, why) in bad {
        let e = parse(input).expect_err(&String::from_utf8_lossy(input));
        assert!(e.to_string().contains(why), "{input:?}: {e}");
    }
    // 107 bytes without CRLF: too long, even though more bytes might be a CRLF.
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX_LEN, b'a');
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    // 106 bytes then CRLF would be 108.
    long.truncate(V1_MAX_LEN - 1);
    long.push(b'\r');
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    // One byte shorter fits.
    long.truncate(V1_MAX_LEN - 2);
    long.extend_from_slice(b"\r\n");
    assert_eq!(complete(&long).1, V1_MAX_LEN);
}

/// The specification's v2 layout, written out by hand.
fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(fam);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn spec_v2_layouts() {
    // TCP over IPv4: src 192.168.0.1:56324 -> dst 192.168.0.11:443.
    let body4 = [192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb];
    let h = v2(0x21, 0x11, &body4);
    let (hd, len) = complete(&[h.as_slice(), b"rest"].concat());
    assert_eq!(len, 28);
    assert_eq!(hd.version, Version::V2);
    assert_eq!(hd.addresses, tcp("192.168.0.1:56324", "192.168.0.11:443"));
    // TCP over IPv6.
    let mut body6 = Vec::new();
    body6.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    body6.extend_from_slice(
        &"2001:db8::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    body6.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
    let (hd, len) = complete(&v2(0x21, 0x21, &body6));
    assert_eq!(len, 52);
    assert_eq!(hd.addresses, tcp("[2001:db8::1]:12345", "[2001:db8::2]:80"));
    // With TLVs after the addresses (PP2_TYPE_ALPN "h2", PP2_TYPE_NOOP empty).
    let mut with_tlv = body4.to_vec();
    with_tlv.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x04, 0, 0]);
    let (hd, len) = complete(&v2(0x21, 0x11, &with_tlv));
    assert_eq!(len, 16 + with_tlv.len());
    assert_eq!(hd.addresses, tcp("192.168.0.1:56324", "192.168.0.11:443"));
    // LOCAL: the family and addresses are ignored.
    assert_eq!(complete(&v2(0x20, 0x00, &[])).0.addresses, Addresses::Local);
    assert_eq!(
        complete(&v2(0x20, 0x11, &body4)).0.addresses,
        Addresses::Local
    );
    // PROXY with UNSPEC: proxied from somewhere unknown.
    assert_eq!(
        complete(&v2(0x21, 0x00, &[])).0.addresses,
        Addresses::Unknown
    );
    // Unix stream sockets: 2 x 108 bytes of path.
    let (hd, len) = complete(&v2(0x21, 0x31, &[0u8; 216]));
    assert_eq!((hd.addresses, len), (Addresses::Unknown, 232));
    // Every strict prefix is incomplete.
    let h = v2(0x21, 0x11, &with_tlv);
    for cut in 0..h.len() {
        assert!(
            matches!(parse(&h[..cut]), Ok(Parsed::Incomplete { at_most }) if at_most >= h.len() - cut)
        );
    }
}

#[test]
fn v2_rejects() {
    let body4 = [127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2];
    let bad: &[(Vec<u8>, &str)] = &[
        (v2(0x11, 0x11, &body4), "version 1"),
        (v2(0x31, 0x11, &body4), "version 3"),
        (v2(0x22, 0x11, &body4), "command 2"),
        (v2(0x21, 0x12, &body4), "family"),
        (v2(0x21, 0x41, &body4), "family"),
        (v2(0x21, 0x11, &body4[..11]), "shorter"),
        (v2(0x21, 0x21, &body4), "shorter"),
        (v2(0x21, 0x31, &[0; 100]), "shorter"),
        (
            v2(0x21, 0x11, &[&body4[..], &[1, 0]].concat()),
            "TLV header is cut",
        ),
        (
            v2(0x21, 0x11, &[&body4[..], &[1, 0, 5, 1]].concat()),
            "runs past",
        ),
    ];
    for (input, why) in bad {
        let e = parse(input).expect_err(why);
        assert!(e.to_string().contains(why), "{e}");
    }
    let mut sig = V2_SIGNATURE.to_vec();
    sig[11] = b'X';
    assert!(matches!(parse(&sig), Err(ProxyError::NotProxy(_))));
}

#[test]
fn encode_round_trips() {
    let cases = [
        tcp("10.1.2.3:40000", "10.9.8.7:443"),
        tcp("[2001:db8::7]:1", "[::1]:65535"),
        Addresses::Unknown,
        Addresses::Local,
    ];
    for v in [Version::V1, Version::V2] {
        for a in cases {
            let bytes = encode(v, &a);
            let (h, len) = complete(&bytes);
            assert_eq!(len, bytes.len());
            assert_eq!(h.version, v);
            let want = match (v, a) {
                (Version::V1, Addresses::Local) => Addresses::Unknown,
                _ => a,
            };
            assert_eq!(h.addresses, want, "{v:?} {a:?}");
        }
    }
    assert_eq!(
        encode(Version::V1, &tcp("192.168.0.1:56324", "192.168.0.11:443")),
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    );
    // Mixed families become IPv6 with the IPv4 address mapped.
    let mixed = tcp("10.0.0.1:5", "[2001:db8::1]:6");
    let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
    for v in [Version::V1, Version::V2] {
        let Addresses::Tcp { source, .. } = complete(&encode(v, &mixed)).0.addresses else {
            panic!("not tcp");
        };
        assert_eq!(source, mapped);
    }
}

/// Arbitrary input (deterministic pseudo-random, and mutations of valid headers): no panic,
/// and a complete header never claims more bytes than it was given.
#[test]
fn arbitrary_input_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds = [
        encode(Version::V1, &tcp("1.2.3.4:5", "6.7.8.9:10")),
        encode(Version::V2, &tcp("[::1]:5", "[::2]:10")),
        encode(Version::V2, &Addresses::Local),
        b"PROXY UNKNOWN\r\n".to_vec(),
    ];
    for i in 0..200_000 {
        let mut buf = seeds[i % seeds.len()].clone();
        let n = next();
        match n % 4 {
            0 => {
                let at = (n >> 8) as usize % buf.len();
                buf[at] = (n >> 20) as u8;
            }
            1 => buf.truncate((n >> 8) as usize % (buf.len() + 1)),
            2 => buf.extend((0..(n >> 8) % 64).map(|k| (n >> (k % 56)) as u8)),
            _ => {
                let len = (n >> 8) as usize % 300;
                buf = (0..len).map(|_| next() as u8).collect();
                if n >> 40 & 1 == 1 && !buf.is_empty() {
                    let k = 12.min(buf.len());
                    buf[..k].copy_from_slice(&V2_SIGNATURE[..k]);
                }
            }
        }
        if let Ok(Parsed::Complete { len, .. }) = parse(&buf) {
            assert!(len <= buf.len());
        }
    }
}
