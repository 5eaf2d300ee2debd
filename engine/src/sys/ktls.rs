// Kernel TLS is configured and driven through setsockopt/recvmsg/sendmsg with raw pointers to
// C structs, which needs `unsafe`. The crate root denies it; this module is one of the few
// places allowed to use it (house style point 8). Each block states its invariant.
#![allow(
    unsafe_code,
    reason = "kTLS setsockopt/recvmsg/sendmsg take raw pointers"
)]
//! Kernel TLS (kTLS) system calls: probing what the kernel supports, installing session keys on
//! a socket, and reading or writing the records that are not application data.
//!
//! The layouts follow `include/uapi/linux/tls.h` through the `libc` crate's definitions. This
//! module does not decide what to do with a control record (that is
//! [`crate::tls::control::control_record`]) and does not run handshakes.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use libc::c_int;
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite,
};

use super::SyscallError;

/// Why a socket could not be given kTLS keys. It converts into the engine's `Error` with the
/// same variant and the same text, so callers above `sys` see no difference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel interface has no layout for the negotiated version or cipher.
    #[error("{feature} is not available: {why}")]
    Unavailable {
        /// The feature (`"kernel TLS"`).
        feature: &'static str,
        /// Why not.
        why: String,
    },
    /// A system call failed.
    #[error(transparent)]
    Syscall(#[from] SyscallError),
}

/// TLS record content types (RFC 8446 §5.1).
const CONTENT_ALERT: u8 = 21;
const CONTENT_APPLICATION_DATA: u8 = 23;

/// The upper-layer protocol name that turns a TCP socket into a kTLS socket.
const ULP_TLS: [u8; 3] = *b"tls";

const CALL_ULP: &str = "setsockopt(SOL_TCP, TCP_ULP)";
const CALL_TX: &str = "setsockopt(SOL_TLS, TLS_TX)";
const CALL_RX: &str = "setsockopt(SOL_TLS, TLS_RX)";

/// What the running kernel's TLS offload accepts, as found by [`probe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KtlsSupport {
    /// The `tls` upper-layer protocol exists and accepts at least one cipher in both directions.
    pub available: bool,
    /// AES-128-GCM keys are accepted (TLS 1.2 and 1.3).
    pub aes_128_gcm: bool,
    /// AES-256-GCM keys are accepted (TLS 1.2 and 1.3).
    pub aes_256_gcm: bool,
    /// ChaCha20-Poly1305 keys are accepted (TLS 1.2 and 1.3; Linux 5.11 and later).
    pub chacha20_poly1305: bool,
    /// Why kTLS (or some cipher) is not available; `None` when everything is.
    pub reason: Option<String>,
}

impl KtlsSupport {
    /// Whether a connection that negotiated `suite` can be handed to the kernel.
    ///
    /// Only the AEAD matters to the kernel; the key exchange and signature were rustls's job.
    pub fn supports(&self, suite: SupportedCipherSuite) -> bool {
        self.available
            && match Cipher::of_suite(suite.suite()) {
                Some(Cipher::Aes128Gcm) => self.aes_128_gcm,
                Some(Cipher::Aes256Gcm) => self.aes_256_gcm,
                Some(Cipher::Chacha20Poly1305) => self.chacha20_poly1305,
                None => false,
            }
    }
}

/// Finds out which kTLS ciphers this kernel accepts, on throw-away loopback sockets.
///
/// It first sets `TCP_ULP "tls"` on a connected 127.0.0.1 socket: `ENOENT` there means the
/// kernel has no `tls` module. Then, for each cipher on a fresh connected socket, it installs a
/// dummy TLS 1.3 key with `TLS_TX` and `TLS_RX`; a cipher counts as supported only if both are
/// accepted. Probing with TLS 1.3 is deliberate: every kernel that takes TLS 1.3 keys
/// (Linux 5.1+) also takes TLS 1.2 keys for the same cipher, so a positive answer holds for
/// both versions. It never fails: a failure is reported in [`KtlsSupport::reason`].
pub fn probe() -> KtlsSupport {
    let unavailable = |reason: String| KtlsSupport {
        reason: Some(reason),
        ..KtlsSupport::default()
    };
    let pair = match LoopbackPair::new() {
        Ok(pair) => pair,
        Err(e) => return unavailable(format!("cannot open a loopback TCP pair to probe: {e}")),
    };
    if let Err(e) = set_ulp(pair.client.as_fd()) {
        return unavailable(ulp_reason(&e));
    }
    drop(pair);

    let mut support = KtlsSupport::default();
    let mut refused = Vec::new();
    for cipher in Cipher::ALL {
        match probe_cipher(cipher) {
            Ok(()) => match cipher {
                Cipher::Aes128Gcm => support.aes_128_gcm = true,
                Cipher::Aes256Gcm => support.aes_256_gcm = true,
                Cipher::Chacha20Poly1305 => support.chacha20_poly1305 = true,
            },
            Err(e) => refused.push(format!("{}: {e}", cipher.name())),
        }
    }
    support.available = support.aes_128_gcm || support.aes_256_gcm || support.chacha20_poly1305;
    if !refused.is_empty() {
        let refused = refused.join("; ");
        support.reason = Some(if support.available {
            format!("some ciphers are not supported by the kernel ({refused})")
        } else {
            format!("the kernel's `tls` module accepts no cipher ({refused})")
        });
    }
    support
}

/// Hands a finished rustls session to the kernel: sets `TCP_ULP "tls"` on `fd`, then installs
/// the transmit and receive keys (`TLS_TX`, `TLS_RX`) from `secrets`.
///
/// `version` is the negotiated protocol version (TLS 1.2 or 1.3). Call it only when rustls has
/// no unsent records and nothing past the handshake was read from the socket: records already in
/// the socket's receive queue are then decrypted by the kernel, in order. rustls refuses to
/// extract secrets with unsent records, but it cannot know about received bytes it was not
/// shown, so the handshake must read the socket record by record.
///
/// # Errors
///
/// [`Error::Unavailable`] for a version or cipher the kernel interface has no layout for
/// (checked before touching the socket); [`Error::Syscall`] naming the call that failed, such
/// as `setsockopt(SOL_TCP, TCP_ULP)` when the kernel has no `tls` module. A failed `TCP_ULP`
/// leaves the socket plain TCP; a later failure leaves it half-configured. Either way the rustls
/// session was consumed to extract `secrets`, so the connection cannot continue: check
/// [`KtlsSupport::supports`] for the negotiated suite *before* extracting, and close the socket
/// on error.
#[cfg(test)]
pub fn enable(
    fd: BorrowedFd<'_>,
    version: ProtocolVersion,
    secrets: ExtractedSecrets,
) -> Result<(), Error> {
    // Checked before touching the socket: an unsupported version or cipher changes nothing.
    let keys = crypto_infos(version, secrets)?;
    attach(fd)?;
    install_keys(fd, keys)
}

/// Attaches the `tls` ULP to a connected TCP socket without keys yet: the socket keeps working
/// as plain TCP, so a caller can do this *before* consuming its rustls session and carry on in
/// user space if it fails. The kernel refuses (`ENOTCONN`) once the connection has left
/// `ESTABLISHED`, e.g. when the peer's FIN already arrived. Then call [`enable_attached`].
pub fn attach(fd: BorrowedFd<'_>) -> Result<(), Error> {
    set_ulp(fd).map_err(|e| SyscallError::new(CALL_ULP, e).into())
}

/// [`enable`] for a socket that [`attach`] already prepared: installs the TX and RX keys.
pub fn enable_attached(
    fd: BorrowedFd<'_>,
    version: ProtocolVersion,
    secrets: ExtractedSecrets,
) -> Result<(), Error> {
    install_keys(fd, crypto_infos(version, secrets)?)
}

/// The kernel's TX and RX key layouts for `secrets`, or why the kernel interface has none.
fn crypto_infos(
    version: ProtocolVersion,
    secrets: ExtractedSecrets,
) -> Result<(CryptoInfo, CryptoInfo), Error> {
    let version = match version {
        ProtocolVersion::TLSv1_2 => libc::TLS_1_2_VERSION,
        ProtocolVersion::TLSv1_3 => libc::TLS_1_3_VERSION,
        other => {
            return Err(Error::Unavailable {
                feature: "kernel TLS",
                why: format!("protocol version {other:?} (the kernel supports TLS 1.2 and 1.3)"),
            });
        }
    };
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    Ok((
        CryptoInfo::new(version, tx_seq, &tx, Direction::Tx)?,
        CryptoInfo::new(version, rx_seq, &rx, Direction::Rx)?,
    ))
}

/// Installs the TX then the RX keys on a socket that has the `tls` ULP.
fn install_keys(fd: BorrowedFd<'_>, (tx, rx): (CryptoInfo, CryptoInfo)) -> Result<(), Error> {
    tx.install(fd, libc::TLS_TX)
        .map_err(|e| SyscallError::new(CALL_TX, e))?;
    rx.install(fd, libc::TLS_RX)
        .map_err(|e| SyscallError::new(CALL_RX, e))?;
    Ok(())
}

/// Reads from a kTLS receive socket, returning `(record content type, bytes read)`.
///
/// One call never mixes records of different types. Application data is type 23 (also returned
/// when the kernel attaches no record type, as on a plain TCP socket); anything else is a
/// control record (21 alert, 22 handshake) whose plaintext is in `buf[..n]`. Give a buffer of at
/// least 16 KiB so a control record arrives whole. `Ok((23, 0))` is end of stream. A blocking
/// or non-blocking read follows the socket's mode; `EINTR` is retried.
///
/// The kernel answers `EIO` to a plain `recv` and `EINVAL` to `splice` when the next record is
/// a control record, which is the cue to call this.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = RecordTypeCmsg::zeroed();
    let mut msg = zeroed_msghdr();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&raw mut cmsg).cast();
    let n = loop {
        // recvmsg rewrites these on return; start every attempt from the full buffer.
        msg.msg_controllen = mem::size_of::<RecordTypeCmsg>() as _;
        msg.msg_flags = 0;
        // SAFETY: `msg` points at `iov`, which covers exactly the exclusively borrowed `buf`,
        // and at `cmsg`, a local of `msg_controllen` bytes; the kernel writes at most that much
        // into each, and all three outlive the call. `fd` is an open descriptor (borrowed).
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Our buffer holds exactly one record-type message; anything more is unexpected, and
        // guessing "application data" here could pass an alert off as payload.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "recvmsg: control message truncated (unexpected ancillary data)",
        ));
    }
    let record_type = if msg.msg_controllen >= CMSG_LEN_1 as _
        && cmsg.hdr.cmsg_len >= CMSG_LEN_1 as _
        && cmsg.hdr.cmsg_level == libc::SOL_TLS
        && cmsg.hdr.cmsg_type == libc::TLS_GET_RECORD_TYPE
    {
        cmsg.data[0]
    } else {
        CONTENT_APPLICATION_DATA
    };
    Ok((record_type, n))
}

/// Sends a warning-level `close_notify` alert through a kTLS transmit socket.
///
/// This is a `sendmsg` with a `TLS_SET_RECORD_TYPE` = 21 control message and the two-byte
/// payload `[1, 0]`; the kernel encrypts it as its own record. It does not shut the socket down.
/// `EINTR` is retried; `SIGPIPE` is suppressed (`MSG_NOSIGNAL`).
pub fn send_close_notify(fd: BorrowedFd<'_>) -> io::Result<()> {
    // AlertLevel warning(1), AlertDescription close_notify(0).
    let payload = [1u8, 0u8];
    let mut iov = libc::iovec {
        // sendmsg only reads through iov_base; the pointer is `*mut` only by C's declaration.
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    let mut cmsg = RecordTypeCmsg::zeroed();
    cmsg.hdr.cmsg_len = CMSG_LEN_1 as _;
    cmsg.hdr.cmsg_level = libc::SOL_TLS;
    cmsg.hdr.cmsg_type = libc::TLS_SET_RECORD_TYPE;
    cmsg.data[0] = CONTENT_ALERT;
    let mut msg = zeroed_msghdr();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&raw mut cmsg).cast();
    msg.msg_controllen = mem::size_of::<RecordTypeCmsg>() as _;
    loop {
        // SAFETY: `msg` points at `iov` (covering the live local `payload`) and at `cmsg`, a
        // local of `msg_controllen` bytes holding one well-formed cmsghdr; sendmsg only reads
        // them, and all outlive the call. `fd` is an open descriptor (borrowed).
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n == payload.len() as isize {
            return Ok(());
        }
        if n >= 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sendmsg: close_notify alert cut short ({n} of 2 bytes)"),
            ));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An AEAD the kernel's TLS layer implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    const ALL: [Cipher; 3] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];

    fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Chacha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    fn of_suite(suite: CipherSuite) -> Option<Cipher> {
        match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Cipher::Aes128Gcm),
            CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Cipher::Aes256Gcm),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
                Some(Cipher::Chacha20Poly1305)
            }
            _ => None,
        }
    }
}

/// One direction's key material in the kernel's `tls12_crypto_info_*` layout (the name is
/// historical: the same structs carry TLS 1.3 keys).
enum CryptoInfo {
    Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128),
    Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256),
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl CryptoInfo {
    /// Lays out rustls's secrets for the kernel.
    ///
    /// rustls hands every AEAD a 12-byte IV. For AES-GCM the kernel wants it split: the first
    /// 4 bytes are the salt (TLS 1.2's implicit nonce, TLS 1.3's IV prefix) and the last 8 the
    /// `iv` field (TLS 1.3's IV suffix; for TLS 1.2 the explicit nonce rustls derived from the
    /// key block, moved past the nonces rustls already used when sending, see
    /// [`tls12_gcm_first_explicit_nonce`]). ChaCha20-Poly1305 takes the whole 12 bytes as `iv`
    /// and has no salt. `rec_seq` is the next record sequence number, big-endian.
    fn new(
        version: u16,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
        direction: Direction,
    ) -> Result<Self, Error> {
        let rec_seq = seq.to_be_bytes();
        let split = |iv: &[u8]| -> Result<([u8; 4], [u8; 8]), Error> {
            let (salt, explicit) = split_gcm_iv(iv)?;
            Ok(match (version, direction) {
                (libc::TLS_1_2_VERSION, Direction::Tx) => {
                    (salt, tls12_gcm_first_explicit_nonce(explicit, seq))
                }
                _ => (salt, explicit),
            })
        };
        Ok(match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                let (salt, iv) = split(iv.as_ref())?;
                CryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                    info: libc::tls_crypto_info {
                        version,
                        cipher_type: libc::TLS_CIPHER_AES_GCM_128,
                    },
                    iv,
                    key: exact(key.as_ref(), "AES-128-GCM key")?,
                    salt,
                    rec_seq,
                })
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                let (salt, iv) = split(iv.as_ref())?;
                CryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                    info: libc::tls_crypto_info {
                        version,
                        cipher_type: libc::TLS_CIPHER_AES_GCM_256,
                    },
                    iv,
                    key: exact(key.as_ref(), "AES-256-GCM key")?,
                    salt,
                    rec_seq,
                })
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                CryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: libc::tls_crypto_info {
                        version,
                        cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305,
                    },
                    iv: exact(iv.as_ref(), "ChaCha20-Poly1305 IV")?,
                    key: exact(key.as_ref(), "ChaCha20-Poly1305 key")?,
                    salt: [],
                    rec_seq,
                })
            }
            _ => {
                return Err(Error::Unavailable {
                    feature: "kernel TLS",
                    why: "the negotiated cipher has no kernel implementation".to_owned(),
                });
            }
        })
    }

    /// A well-formed TLS 1.3 key of zeros, for probing.
    fn dummy(cipher: Cipher) -> Self {
        let info = |cipher_type| libc::tls_crypto_info {
            version: libc::TLS_1_3_VERSION,
            cipher_type,
        };
        match cipher {
            Cipher::Aes128Gcm => CryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: info(libc::TLS_CIPHER_AES_GCM_128),
                iv: [0; 8],
                key: [0; 16],
                salt: [0; 4],
                rec_seq: [0; 8],
            }),
            Cipher::Aes256Gcm => CryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: info(libc::TLS_CIPHER_AES_GCM_256),
                iv: [0; 8],
                key: [0; 32],
                salt: [0; 4],
                rec_seq: [0; 8],
            }),
            Cipher::Chacha20Poly1305 => {
                CryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                    iv: [0; 12],
                    key: [0; 32],
                    salt: [],
                    rec_seq: [0; 8],
                })
            }
        }
    }

    /// `setsockopt(SOL_TLS, direction)` with this key; `direction` is `TLS_TX` or `TLS_RX`.
    fn install(&self, fd: BorrowedFd<'_>, direction: c_int) -> io::Result<()> {
        match self {
            CryptoInfo::Aes128Gcm(info) => setsockopt(fd, libc::SOL_TLS, direction, info),
            CryptoInfo::Aes256Gcm(info) => setsockopt(fd, libc::SOL_TLS, direction, info),
            CryptoInfo::Chacha20Poly1305(info) => setsockopt(fd, libc::SOL_TLS, direction, info),
        }
    }
}

impl Drop for CryptoInfo {
    /// Best-effort wipe of the key copy this module made (rustls wipes its own).
    fn drop(&mut self) {
        let key: &mut [u8] = match self {
            CryptoInfo::Aes128Gcm(info) => &mut info.key,
            CryptoInfo::Aes256Gcm(info) => &mut info.key,
            CryptoInfo::Chacha20Poly1305(info) => &mut info.key,
        };
        key.fill(0);
        std::hint::black_box(key);
    }
}

/// Which way a key works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Tx,
    Rx,
}

/// The first explicit nonce the kernel should send under a TLS 1.2 AES-GCM key that rustls has
/// already used for `seq` records.
///
/// TLS 1.2 GCM carries an 8-byte explicit nonce in every record, chosen by the sender. rustls
/// sent `explicit ^ j` for its records `j = 0..seq` (its Finished is `j = 0`), but the kernel
/// sends its starting value and then *increments* it per record (`tls_advance_record_sn`).
/// Starting at `explicit` itself would repeat the nonce of rustls's Finished under the same key,
/// which breaks AES-GCM. So start just past the aligned block of `2^m >= seq` values that holds
/// every `explicit ^ j`: the kernel's counter cannot return to that block before it has sent
/// about 2^64 records. The receiver reads the explicit nonce from each record, so any unused
/// value is valid on the wire (RFC 5288 §3).
fn tls12_gcm_first_explicit_nonce(explicit: [u8; 8], seq: u64) -> [u8; 8] {
    if seq == 0 {
        return explicit;
    }
    let used_low_bits = seq
        .checked_next_power_of_two()
        .map_or(u64::MAX, |span| span - 1);
    (u64::from_be_bytes(explicit) | used_low_bits)
        .wrapping_add(1)
        .to_be_bytes()
}

fn split_gcm_iv(iv: &[u8]) -> Result<([u8; 4], [u8; 8]), Error> {
    let iv: [u8; 12] = exact(iv, "AES-GCM IV")?;
    let (salt, explicit) = iv.split_at(4);
    Ok((exact(salt, "salt")?, exact(explicit, "IV")?))
}

fn exact<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], Error> {
    bytes.try_into().map_err(|_| Error::Unavailable {
        feature: "kernel TLS",
        why: format!(
            "rustls gave a {}-byte {what}; the kernel needs {N}",
            bytes.len()
        ),
    })
}

/// A connected TCP pair on 127.0.0.1 (the kernel refuses `TCP_ULP "tls"` on unconnected sockets).
struct LoopbackPair {
    client: TcpStream,
    _server: TcpStream,
}

impl LoopbackPair {
    fn new() -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        Ok(LoopbackPair {
            client,
            _server: server,
        })
    }
}

fn probe_cipher(cipher: Cipher) -> io::Result<()> {
    let pair = LoopbackPair::new()?;
    let fd = pair.client.as_fd();
    set_ulp(fd)?;
    let info = CryptoInfo::dummy(cipher);
    info.install(fd, libc::TLS_TX)
        .map_err(|e| io::Error::new(e.kind(), format!("TLS_TX: {e}")))?;
    info.install(fd, libc::TLS_RX)
        .map_err(|e| io::Error::new(e.kind(), format!("TLS_RX: {e}")))
}

fn ulp_reason(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOENT) {
        "the kernel has no `tls` module (TCP_ULP \"tls\": ENOENT)".to_owned()
    } else {
        format!("TCP_ULP \"tls\" was refused: {e}")
    }
}

fn set_ulp(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt(fd, libc::SOL_TCP, libc::TCP_ULP, &ULP_TLS)
}

/// `setsockopt(fd, level, name, value, sizeof value)`.
///
/// `T` is a `repr(C)` option struct without padding (or a byte array), so every byte the
/// kernel reads is initialized.
fn setsockopt<T>(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: &T) -> io::Result<()> {
    let len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live shared reference, so it points at `size_of::<T>()` readable
    // bytes for the whole call, and setsockopt only reads optval. `fd` is an open descriptor.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A control-message buffer holding exactly one one-byte message: `cmsghdr` followed by its
/// data, laid out as `CMSG_LEN(1)`/`CMSG_SPACE(1)` expect (checked below).
#[repr(C)]
struct RecordTypeCmsg {
    hdr: libc::cmsghdr,
    data: [u8; mem::size_of::<usize>()],
}

impl RecordTypeCmsg {
    fn zeroed() -> Self {
        // SAFETY: `cmsghdr` is a C struct of integers (plus, on some libcs, integer padding
        // fields) and `data` is bytes, so the all-zero bit pattern is a valid value.
        unsafe { mem::zeroed() }
    }
}

// SAFETY: CMSG_LEN is pure arithmetic on its argument, evaluated at compile time; libc marks
// it `unsafe` only because it mirrors a C macro.
const CMSG_LEN_1: usize = unsafe { libc::CMSG_LEN(1) } as usize;
// SAFETY: as for CMSG_LEN: pure arithmetic, evaluated at compile time.
const CMSG_SPACE_1: usize = unsafe { libc::CMSG_SPACE(1) } as usize;
const _: () = assert!(mem::offset_of!(RecordTypeCmsg, data) + 1 == CMSG_LEN_1);
const _: () = assert!(mem::size_of::<RecordTypeCmsg>() == CMSG_SPACE_1);

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: `msghdr` is a C struct of integers and raw pointers (plus padding fields on some
    // libcs); all-zero is valid: null pointers with zero lengths, no flags.
    unsafe { mem::zeroed() }
}

#[cfg(test)]
mod tests;
