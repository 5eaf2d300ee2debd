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
//! [`crate::tls::ktls::control_record`]) and does not run handshakes.

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
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::thread;

    use rustls::crypto::cipher::{AeadKey, Iv};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};
    use splice_test_pki::{Cert, KeyType, Leaf, TempDir};

    use super::*;
    use crate::tls::ktls::{ControlAction, control_record};
    use crate::tls::material::{self, ServerTlsOptions};

    /// A self-signed ECDSA P-256 `localhost` certificate and its key as files in a fresh temp
    /// dir (removed on drop).
    struct Identity {
        _dir: TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    impl Identity {
        fn new() -> Self {
            let dir = TempDir::new("ktls");
            let cert = Cert::self_signed(&["localhost"], KeyType::P256);
            let leaf = Leaf::write(&cert, dir.path(), "localhost").expect("write identity");
            Identity {
                _dir: dir,
                cert: leaf.cert,
                key: leaf.key,
            }
        }
    }

    #[test]
    fn probe_agrees_with_a_direct_setsockopt() {
        let pair = LoopbackPair::new().expect("loopback pair");
        let direct = set_ulp(pair.client.as_fd());
        let support = probe();
        match direct {
            Err(e) => {
                assert!(!support.available, "{support:?}");
                assert!(!support.aes_128_gcm && !support.aes_256_gcm && !support.chacha20_poly1305);
                let reason = support.reason.expect("a reason");
                if e.raw_os_error() == Some(libc::ENOENT) {
                    assert_eq!(
                        reason,
                        "the kernel has no `tls` module (TCP_ULP \"tls\": ENOENT)"
                    );
                } else {
                    assert!(reason.contains(&e.to_string()), "{reason} vs {e}");
                }
            }
            Ok(()) => {
                for cipher in Cipher::ALL {
                    let accepted = probe_cipher(cipher).is_ok();
                    let claimed = match cipher {
                        Cipher::Aes128Gcm => support.aes_128_gcm,
                        Cipher::Aes256Gcm => support.aes_256_gcm,
                        Cipher::Chacha20Poly1305 => support.chacha20_poly1305,
                    };
                    assert_eq!(accepted, claimed, "{cipher:?}: {support:?}");
                }
                assert_eq!(
                    support.available,
                    support.aes_128_gcm || support.aes_256_gcm || support.chacha20_poly1305
                );
                let all = support.aes_128_gcm && support.aes_256_gcm && support.chacha20_poly1305;
                assert_eq!(support.reason.is_none(), all, "{support:?}");
            }
        }
    }

    #[test]
    fn supports_follows_the_cipher() {
        let support = KtlsSupport {
            available: true,
            aes_128_gcm: true,
            aes_256_gcm: false,
            chacha20_poly1305: true,
            reason: None,
        };
        for suite in rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES {
            let name = format!("{:?}", suite.suite());
            let expected = !name.contains("AES_256");
            assert_eq!(support.supports(*suite), expected, "{name}");
        }
        let none = KtlsSupport::default();
        assert!(
            rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
                .iter()
                .all(|suite| !none.supports(*suite))
        );
    }

    #[test]
    fn crypto_info_matches_the_kernel_layout() {
        // Sizes from include/uapi/linux/tls.h.
        assert_eq!(mem::size_of::<libc::tls12_crypto_info_aes_gcm_128>(), 40);
        assert_eq!(mem::size_of::<libc::tls12_crypto_info_aes_gcm_256>(), 56);
        assert_eq!(
            mem::size_of::<libc::tls12_crypto_info_chacha20_poly1305>(),
            56
        );

        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let iv: [u8; 12] = std::array::from_fn(|i| 0xa0 + i as u8);
        let seq = 0x0102_0304_0506_0708;
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        let Ok(CryptoInfo::Aes256Gcm(info)) =
            CryptoInfo::new(libc::TLS_1_3_VERSION, seq, &secrets, Direction::Tx)
        else {
            panic!("AES-256-GCM layout");
        };
        assert_eq!(info.info.version, 0x0304);
        assert_eq!(info.info.cipher_type, 52);
        assert_eq!(info.key, key);
        assert_eq!(info.salt, iv[..4]);
        assert_eq!(info.iv, iv[4..]);
        assert_eq!(info.rec_seq, [1, 2, 3, 4, 5, 6, 7, 8]);

        let secrets = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        let Ok(CryptoInfo::Chacha20Poly1305(info)) =
            CryptoInfo::new(libc::TLS_1_2_VERSION, 7, &secrets, Direction::Tx)
        else {
            panic!("ChaCha20-Poly1305 layout");
        };
        assert_eq!(info.info.version, 0x0303);
        assert_eq!(info.info.cipher_type, 54);
        assert_eq!(info.iv, iv);
        assert_eq!(info.key, key);
        assert_eq!(info.rec_seq, 7u64.to_be_bytes());

        // A 32-byte key labelled AES-128 is refused before any syscall.
        let secrets = ConnectionTrafficSecrets::Aes128Gcm {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        match CryptoInfo::new(libc::TLS_1_3_VERSION, 0, &secrets, Direction::Rx) {
            Err(Error::Unavailable { why, .. }) => assert!(why.contains("32-byte"), "{why}"),
            _ => panic!("expected a key-length error"),
        }
    }

    #[test]
    fn tls12_gcm_tx_never_reuses_a_rustls_nonce() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x40 + i as u8);
        let iv = [1, 2, 3, 4, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x81];
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        let info = |direction| match CryptoInfo::new(libc::TLS_1_2_VERSION, 1, &secrets, direction)
        {
            Ok(CryptoInfo::Aes256Gcm(info)) => (info.salt, info.iv, info.rec_seq),
            _ => panic!("AES-256-GCM layout"),
        };
        // Receiving: the kernel reads explicit nonces off the wire; the layout is rustls's.
        assert_eq!(
            info(Direction::Rx),
            (
                [1, 2, 3, 4],
                iv[4..].try_into().unwrap(),
                [0, 0, 0, 0, 0, 0, 0, 1]
            )
        );
        // Sending after rustls's Finished (seq 0, nonce explicit ^ 0): the next value up.
        let (salt, tx_iv, rec_seq) = info(Direction::Tx);
        assert_eq!(salt, [1, 2, 3, 4]);
        assert_eq!(tx_iv, [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x82]);
        assert_eq!(rec_seq, 1u64.to_be_bytes());

        // Property: no kernel nonce start + k equals a rustls nonce explicit ^ j, j < seq.
        let mut state = 0x243f_6a88_85a3_08d3u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2_000 {
            let explicit = match round % 3 {
                0 => u64::MAX - (next() % 64),
                _ => next(),
            };
            let seq = 1 + next() % 70;
            let start =
                u64::from_be_bytes(tls12_gcm_first_explicit_nonce(explicit.to_be_bytes(), seq));
            for k in 0..256u64 {
                let sent = start.wrapping_add(k);
                assert!(
                    (0..seq).all(|j| sent != explicit ^ j),
                    "explicit {explicit:#x}, seq {seq}: kernel record {k} reuses a nonce"
                );
            }
        }
        assert_eq!(tls12_gcm_first_explicit_nonce([9; 8], 0), [9; 8]);
        assert_eq!(tls12_gcm_first_explicit_nonce([0xff; 8], 1), [0; 8]);
        assert_eq!(tls12_gcm_first_explicit_nonce([0; 8], u64::MAX), [0; 8]);
    }

    #[test]
    fn close_notify_and_recv_record_on_plain_tcp() {
        // Plain TCP ignores SOL_TLS control messages, so this checks that the kernel accepts our
        // cmsg framing (a bad cmsg_len is EINVAL) and that recvmsg without a TLS cmsg reads as
        // application data.
        let pair = LoopbackPair::new().expect("loopback pair");
        send_close_notify(pair.client.as_fd()).expect("sendmsg");
        let mut buf = [0u8; 16];
        let (kind, n) = recv_record(pair._server.as_fd(), &mut buf).expect("recvmsg");
        assert_eq!((kind, &buf[..n]), (23, &[1u8, 0][..]));
        pair.client.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(
            recv_record(pair._server.as_fd(), &mut buf).expect("eof"),
            (23, 0)
        );
    }

    #[test]
    fn socket_errors_carry_the_errno() {
        let pair = LoopbackPair::new().expect("loopback pair");
        let (client, server) = (pair.client, pair._server);
        drop(server);
        // The peer is gone: after an RST, sendmsg fails (EPIPE/ECONNRESET) without SIGPIPE.
        let mut failed = None;
        for _ in 0..100 {
            if let Err(e) = send_close_notify(client.as_fd()) {
                failed = Some(e);
                break;
            }
            thread::sleep(std::time::Duration::from_millis(5));
        }
        let e = failed.expect("sendmsg to a closed peer fails");
        assert!(e.raw_os_error().is_some(), "{e:?}");
    }

    /// A client config offering only `suite`, trusting `ca`, with secret extraction on.
    fn client_with_suite(
        ca: &std::path::Path,
        suite: SupportedCipherSuite,
    ) -> Arc<rustls::ClientConfig> {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let version = match suite {
            SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
            SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(material::load_roots(ca).expect("roots"))
            .with_no_client_auth();
        config.enable_secret_extraction = true;
        Arc::new(config)
    }

    /// Reads application data from a kTLS socket, letting `control_record` judge control records.
    fn read_app_data(fd: BorrowedFd<'_>, version: ProtocolVersion) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 14];
        loop {
            let (kind, n) = recv_record(fd, &mut buf).expect("recv_record");
            if kind == CONTENT_APPLICATION_DATA {
                return buf[..n].to_vec();
            }
            match control_record(kind, &buf[..n], version) {
                ControlAction::Tickets(_) => continue,
                other => panic!("unexpected control record {kind}: {other:?}"),
            }
        }
    }

    /// A real rustls handshake over loopback TCP, then `enable` on both ends. Where the kernel
    /// has kTLS this also moves data both ways and a close_notify; where it has not, `enable`
    /// must fail on TCP_ULP, as `probe` predicted.
    #[test]
    fn enable_after_a_loopback_handshake() {
        let id = Identity::new();
        let server = material::server_config(&ServerTlsOptions {
            cert: id.cert.clone(),
            key: id.key.clone(),
            ..ServerTlsOptions::default()
        })
        .expect("server config");
        let support = probe();
        for suite in rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES {
            // The ECDSA key cannot serve the TLS 1.2 RSA suites.
            if format!("{:?}", suite.suite()).contains("_RSA_") {
                continue;
            }
            let client = client_with_suite(&id.cert, *suite);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = server.clone();
            thread::scope(|s| {
                let server_side = s.spawn(move || {
                    let (mut tcp, _) = listener.accept().expect("accept");
                    let mut tls = ServerConnection::new(server).expect("server conn");
                    while tls.is_handshaking() {
                        tls.complete_io(&mut tcp).expect("server handshake");
                    }
                    while tls.wants_write() {
                        tls.write_tls(&mut tcp).expect("server flush");
                    }
                    let version = tls.protocol_version().expect("version");
                    let result = enable(
                        tcp.as_fd(),
                        version,
                        tls.dangerous_extract_secrets().expect("secrets"),
                    );
                    (tcp, version, result)
                });
                let mut tcp = TcpStream::connect(addr).expect("connect");
                let name = ServerName::try_from("localhost").expect("name");
                let mut tls = ClientConnection::new(client, name).expect("client conn");
                while tls.is_handshaking() {
                    tls.complete_io(&mut tcp).expect("client handshake");
                }
                while tls.wants_write() {
                    tls.write_tls(&mut tcp).expect("client flush");
                }
                let version = tls.protocol_version().expect("version");
                assert_eq!(tls.negotiated_cipher_suite(), Some(*suite));
                let client_result = enable(
                    tcp.as_fd(),
                    version,
                    tls.dangerous_extract_secrets().expect("secrets"),
                );
                let (mut server_tcp, server_version, server_result) =
                    server_side.join().expect("server thread");
                assert_eq!(version, server_version);

                if support.supports(*suite) {
                    client_result.unwrap_or_else(|e| panic!("{suite:?}: client enable: {e}"));
                    server_result.unwrap_or_else(|e| panic!("{suite:?}: server enable: {e}"));
                    tcp.write_all(b"hello from the client").expect("kTLS write");
                    assert_eq!(
                        read_app_data(server_tcp.as_fd(), version),
                        b"hello from the client"
                    );
                    server_tcp
                        .write_all(b"hello from the server")
                        .expect("kTLS write");
                    assert_eq!(
                        read_app_data(tcp.as_fd(), version),
                        b"hello from the server"
                    );
                    send_close_notify(tcp.as_fd()).expect("close_notify");
                    let mut buf = [0u8; 64];
                    let (kind, n) = recv_record(server_tcp.as_fd(), &mut buf).expect("alert");
                    assert_eq!(control_record(kind, &buf[..n], version), ControlAction::Eof);
                    let mut rest = Vec::new();
                    drop(tcp);
                    let _ = server_tcp.read_to_end(&mut rest);
                } else {
                    for result in [client_result, server_result] {
                        let err = result.expect_err("kTLS is not usable for this suite");
                        let Error::Syscall(e) = &err else {
                            panic!("{suite:?}: expected a syscall error, got {err}");
                        };
                        if support.available {
                            // The module exists but refuses this cipher's keys.
                            assert_eq!(e.call, CALL_TX, "{err}");
                        } else {
                            assert_eq!(e.call, "setsockopt(SOL_TCP, TCP_ULP)", "{err}");
                            let reason = support.reason.as_deref().unwrap_or_default();
                            if e.source.raw_os_error() == Some(libc::ENOENT) {
                                assert!(reason.contains("ENOENT"), "{reason}");
                            }
                            assert!(err.to_string().contains("TCP_ULP"), "{err}");
                        }
                    }
                }
            });
        }
    }
}
