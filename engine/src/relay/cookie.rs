//! The relay's `POST /cookie` and the browser's upgrade, engine side: the sans-IO decision
//! ([`splice_proto::tunnel::relay::cookie`]) fed with the registry's answer, and the log
//! line (never the token). The shards call [`answer`] for a `POST`/`OPTIONS` on the agents'
//! port and [`upgrade_refusal`] before admitting an upgrade. See `docs/relay.md`, "Browsers".

use std::net::SocketAddr;

use splice_proto::tunnel::relay::cookie::{self, HttpRequest};
use splice_proto::ws::{TokenSource, UpgradeRequest};

use super::registry::Registry;
use super::tunnel::Timestamp;

/// The answer to `request`: its status, and its bytes (the link sends them and ends).
/// `log_refusal` says whether a refusal may be logged now (the shard's rate limit on log
/// lines).
pub(crate) fn answer(
    relay: &str,
    registry: &Registry,
    cors_origins: &[String],
    request: &HttpRequest,
    peer: Option<SocketAddr>,
    log_refusal: impl FnOnce() -> bool,
) -> (u16, Vec<u8>) {
    if request.method == cookie::Method::Get {
        // The browser source's static files: no secrets, no registry.
        let answer = cookie::respond_get(request, super::console::source_asset(&request.path));
        tracing::debug!(relay, ?peer, status = answer.status, path = %request.path, "browser source file");
        return (answer.status, answer.bytes);
    }
    let answer = cookie::respond(request, cors_origins, |token| {
        registry.cookie_check(token.secret(), Timestamp::now())
    });
    if answer.status < 400 {
        tracing::info!(relay, ?peer, status = answer.status, origin = ?request.origin, reason = answer.reason, "cookie request");
    } else if log_refusal() {
        tracing::warn!(relay, ?peer, status = answer.status, origin = ?request.origin, reason = answer.reason, "cookie request refused");
    }
    (answer.status, answer.bytes)
}

/// Why an upgrade whose token came in the cookie is refused before the registry sees it: a
/// browser sends `Origin`, and a page from an origin not in `cors_origins` must not ride on
/// a cookie another page set (cross-site WebSocket hijacking). The relay's own origin
/// (`https://` and the request's `Host`: the browser source page served on this port) is
/// allowed too. A header token, or a request without `Origin` (not a browser), is not
/// checked here.
pub(crate) fn upgrade_refusal(
    request: &UpgradeRequest,
    cors_origins: &[String],
) -> Option<(u16, &'static str)> {
    match (&request.token_source, &request.origin) {
        (TokenSource::Cookie, Some(origin))
            if !cookie::origin_allowed(origin, cors_origins)
                && !cookie::same_origin(origin, Some(&request.host)) =>
        {
            Some((
                403,
                "the page's origin is not one of the relay's --cors-origin",
            ))
        }
        _ => None,
    }
}
