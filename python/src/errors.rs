//! The package's exceptions, and the one mapping from [`splice_engine::Error`] to them.

use pyo3::prelude::*;
use pyo3::{PyErr, create_exception};
use splice_engine::Error as E;

create_exception!(
    splice_engine,
    Error,
    pyo3::exceptions::PyException,
    "Base of every error the engine raises."
);
create_exception!(
    splice_engine,
    ConfigError,
    Error,
    "A configuration, a forwarder's settings or an argument is wrong; the message names the \
     file or argument, the key and the forwarder."
);
create_exception!(
    splice_engine,
    TlsError,
    Error,
    "A certificate, key or CA file is missing or wrong, or rustls refused a TLS setting; the \
     message names the file."
);
create_exception!(
    splice_engine,
    ConnectionError,
    Error,
    "A listener could not open, a connection was refused (capacity, draining, closed \
     engine) or a system call failed; the message names the address or forwarder."
);
create_exception!(
    splice_engine,
    TunnelError,
    Error,
    "A relay's tunnel API refused a call or did not answer (the message names the URL, the \
     HTTP status and the API's message), or a tunnel agent gave up."
);

/// The exception for an engine error: configuration and API misuse, TLS material, connections
/// and the system, anything else the base class.
pub(crate) fn engine_error(e: E) -> PyErr {
    let msg = e.to_string();
    match e {
        E::Config { .. }
        | E::Address { .. }
        | E::UnknownForwarder { .. }
        | E::ForwarderExists { .. }
        | E::NotClientMode { .. } => ConfigError::new_err(msg),
        E::Certificate { .. } | E::Tls(_) | E::KtlsRecord(_) => TlsError::new_err(msg),
        E::Listen { .. } | E::Draining | E::AtCapacity { .. } | E::Syscall(_) | E::Io { .. } => {
            ConnectionError::new_err(msg)
        }
        E::TunnelApi { .. } => TunnelError::new_err(msg),
        _ => Error::new_err(msg),
    }
}

/// A call on an engine that `close` stopped.
pub(crate) fn closed() -> PyErr {
    ConnectionError::new_err("the engine is closed")
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("TlsError", py.get_type::<TlsError>())?;
    m.add("ConnectionError", py.get_type::<ConnectionError>())?;
    m.add("TunnelError", py.get_type::<TunnelError>())?;
    Ok(())
}
