"""splice-engine in-process: verified TLS for plain TCP code, without a sidecar.

An :class:`Engine` runs the splice-engine forwarding engine on its own threads inside this
process. Its forwarders accept plain TCP and forward it over TLS (client mode), or terminate
TLS and forward plain TCP (server mode); :meth:`Engine.connect` gives a ``socket.socket``
whose bytes leave as verified TLS, and :func:`open_connection` the asyncio form.

Errors are :class:`Error` and its subclasses :class:`ConfigError`, :class:`TlsError` and
:class:`ConnectionError`. The engine logs to the ``splice_engine`` logger of :mod:`logging`.
Every call that can block releases the GIL; an engine may be used from several threads.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import socket
import threading
import weakref
from types import TracebackType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, Union

from . import _native
from ._native import ConfigError, ConnectionError, Error, TlsError

__all__ = [
    "EXAMPLE_CONFIG",
    "ConfigError",
    "ConnectionError",
    "Engine",
    "Error",
    "TlsError",
    "open_connection",
    "set_log_level",
]

StrPath = Union[str, "os.PathLike[str]"]
"""A file name: ``str`` or a path object."""

Setting = Any
"""A setting's value: ``str``, path, ``bool``, ``int``, ``float`` (seconds, for durations),
a list of those, or a dict."""

# Settings that are durations in a file ("5s", "250ms"); a number here is seconds.
_DURATIONS = frozenset(
    {"connect_timeout", "handshake_timeout", "idle_timeout", "drain_timeout", "busy_poll"}
)

_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _settings(values: Mapping[str, Setting]) -> Dict[str, Any]:
    """Settings as the file's table: numbers of seconds as durations, paths as strings."""
    out: Dict[str, Any] = {}
    for k, v in values.items():
        if k in _DURATIONS and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = f"{round(v * 1_000_000)}us"
        out[k] = v
    return out


def _config(
    call: str,
    toml: Optional[str],
    file: Optional[StrPath],
    forwarders: Iterable[Mapping[str, Setting]],
    settings: Mapping[str, Setting],
) -> Tuple[Optional[str], Optional[str], Optional[Dict[str, Any]]]:
    """The native call's arguments: one of a TOML string, a file name, a table."""
    fwds = [_settings(f) for f in forwarders]
    if toml is not None or file is not None:
        if fwds or settings or (toml is not None and file is not None):
            raise ConfigError(f"{call}: give a TOML string, a file or keyword settings, not several")
        return toml, os.fspath(file) if file is not None else None, None
    table = _settings(settings)
    table["forwarder"] = fwds
    return None, None, table


class Engine:
    """A running engine: shards on their own threads, and its forwarders.

    Start it from one of:

    - ``Engine(toml)``: a TOML document, as a configuration file holds it (paths in it are
      relative to the current directory);
    - ``Engine(file=path)``: a configuration file (paths in it are relative to it);
    - keyword settings, the file's top-level keys: ``Engine(threads=2, forwarders=[{...}])``,
      each forwarder a dict of a ``[[forwarder]]`` table's keys (``name``, ``mode``,
      ``listen``, ``connect``, ``ca``, ``cert``, ``key``, ...); durations may be numbers of
      seconds.

    ``splice_engine.EXAMPLE_CONFIG`` is a commented file with every key. A wrong
    configuration raises :class:`ConfigError` (or :class:`TlsError` for certificate files),
    naming the file, the key and the forwarder.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        toml: Optional[str] = None,
        *,
        file: Optional[StrPath] = None,
        forwarders: Iterable[Mapping[str, Setting]] = (),
        **settings: Setting,
    ) -> None:
        self._native = _native.Engine(*_config("Engine()", toml, file, forwarders, settings))
        _engines.add(self)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"<splice_engine.Engine {state}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._native.closed

    def close(self, drain: float = 5.0) -> None:
        """Stops accepting, lets open connections finish for at most ``drain`` seconds, then
        closes the rest and stops the engine's threads. Later calls do nothing."""
        self._native.close(drain)

    def reload(
        self,
        toml: Optional[str] = None,
        *,
        file: Optional[StrPath] = None,
        forwarders: Iterable[Mapping[str, Setting]] = (),
        **settings: Setting,
    ) -> None:
        """Applies a whole new configuration, given as to ``Engine(...)``: forwarders added,
        changed and removed, certificates re-read; open connections carry on. On any error
        nothing changes. Engine-level settings (``threads``, ``driver``, ...) need a new
        engine; a change to one is logged as a warning. :meth:`connect`'s connectors are not
        part of a configuration: they go, and the next :meth:`connect` adds them again."""
        self._native.reload(*_config("reload()", toml, file, forwarders, settings))

    def add_forwarder(self, **forwarder: Setting) -> None:
        """Starts one more forwarder, given as a ``[[forwarder]]`` table's keys
        (``add_forwarder(name="web", mode="server", listen="127.0.0.1:8443",
        connect="127.0.0.1:8080", cert="cert.pem", key="key.pem")``).

        Raises :class:`ConfigError` when a forwarder of that name runs or a key is wrong,
        :class:`TlsError` for a certificate file, :class:`ConnectionError` when its address
        cannot be listened on."""
        self._native.add_forwarder(_settings(forwarder))

    def replace_forwarder(self, **forwarder: Setting) -> None:
        """Replaces the forwarder of the same ``name``: new connections use the new settings,
        open ones carry on. Nothing changes on an error."""
        self._native.replace_forwarder(_settings(forwarder))

    def remove_forwarder(self, name: str) -> None:
        """Stops forwarder ``name`` accepting; its open connections carry on to their end."""
        self._native.remove_forwarder(name)

    def local_addr(self, name: str) -> Optional[Tuple[str, int]]:
        """``(host, port)`` forwarder ``name`` listens on (useful with port 0); ``None`` for
        a name that does not listen."""
        return self._native.local_addr(name)

    def stats(self) -> List[Dict[str, Any]]:
        """The counters of every forwarder, one dict each: ``name``, ``mode``,
        ``accepted``, ``active``, ``refused``, ``bytes_down_to_up``, ``bytes_up_to_down``,
        ``errors_tls`` (and the other error sides), ``handshakes`` (a histogram),
        ``cert_not_after``. :meth:`connect`'s connectors are listed as ``connect-N HOST:PORT``."""
        return self._native.stats()

    @property
    def driver(self) -> str:
        """The driver the engine's threads run: ``"uring"`` or ``"epoll"``."""
        return self._native.driver()

    def connect(
        self,
        host: str,
        port: int,
        *,
        ca: Optional[StrPath] = None,
        sni: Optional[str] = None,
        cert: Optional[StrPath] = None,
        key: Optional[StrPath] = None,
        alpn: Sequence[str] = (),
        ca_pem: Optional[str] = None,
    ) -> socket.socket:
        """A connection to ``host:port`` whose bytes leave as TLS, verified against ``ca``
        (a PEM file) or ``ca_pem`` (PEM text), the system's roots when neither is given, for
        the name ``sni`` (default
        ``host``), presenting the client certificate ``cert``/``key`` if given, offering
        ``alpn``.

        The returned ``socket.socket`` (a blocking Unix socket; the engine holds its other
        end) carries plain bytes: what is written is sent encrypted, what the server sends
        arrives decrypted. ``shutdown(SHUT_WR)`` or ``close()`` ends what is sent (TLS
        ``close_notify``); the server's end arrives as end of file.

        The TLS handshake runs in the engine, after this returns: a server that cannot be
        reached or verified shows as end of file (or ``ECONNRESET`` when written bytes were
        not read), counted in :meth:`stats` (``errors_upstream``, ``errors_tls``) and
        logged with the reason. Raises :class:`ConfigError` or :class:`TlsError` for
        wrong options or files, :class:`ConnectionError` when the engine is closed.

        The first call with a set of options adds a connector for them (a client-mode
        forwarder without a listener); later calls with the same options reuse it.
        """
        fd = self._native.connect(
            host,
            port,
            os.fspath(ca) if ca is not None else None,
            sni,
            os.fspath(cert) if cert is not None else None,
            os.fspath(key) if key is not None else None,
            list(alpn),
            ca_pem,
        )
        return socket.socket(fileno=fd)

    def open(self, forwarder: str) -> socket.socket:
        """A new connection through client-mode forwarder ``forwarder`` (listening or not),
        as :meth:`connect` gives: a ``socket.socket`` whose bytes leave as TLS to the
        forwarder's upstream."""
        return socket.socket(fileno=self._native.open(forwarder))

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        ca: Optional[StrPath] = None,
        sni: Optional[str] = None,
        cert: Optional[StrPath] = None,
        key: Optional[StrPath] = None,
        alpn: Sequence[str] = (),
        ca_pem: Optional[str] = None,
        limit: int = 2**16,
    ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """:meth:`connect` in asyncio's form: ``(reader, writer)`` as
        :func:`asyncio.open_connection` gives them."""
        loop = asyncio.get_running_loop()
        call = functools.partial(
            self.connect, host, port, ca=ca, sni=sni, cert=cert, key=key, alpn=alpn,
            ca_pem=ca_pem,
        )
        sock = await loop.run_in_executor(None, call)
        return await asyncio.open_connection(sock=sock, limit=limit)


_default: Optional[Engine] = None
_default_lock = threading.Lock()


def _default_engine() -> Engine:
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Engine(threads=1)
        return _default


async def open_connection(
    host: str,
    port: int,
    *,
    engine: Optional[Engine] = None,
    ca: Optional[StrPath] = None,
    sni: Optional[str] = None,
    cert: Optional[StrPath] = None,
    key: Optional[StrPath] = None,
    alpn: Sequence[str] = (),
    ca_pem: Optional[str] = None,
    limit: int = 2**16,
) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like :func:`asyncio.open_connection`, with the bytes leaving as verified TLS
    (see :meth:`Engine.connect` for the options). Without ``engine``, a shared one-thread
    engine is started on first use and closed at exit."""
    e = engine if engine is not None else _default_engine()
    return await e.open_connection(
        host, port, ca=ca, sni=sni, cert=cert, key=key, alpn=alpn, ca_pem=ca_pem, limit=limit
    )


def set_log_level(level: int) -> None:
    """Forwards the engine's events at ``level`` (a :mod:`logging` level) and above to the
    ``splice_engine`` logger. An engine takes the logger's effective level when it starts;
    call this after changing the level later."""
    _native.set_level(level)


EXAMPLE_CONFIG: str = _native.EXAMPLE_CONFIG
"""A commented configuration file with every key."""


@atexit.register
def _close_all() -> None:
    # Engine threads log through the interpreter: stop them before it goes.
    for e in list(_engines):
        e.close(drain=0.0)

