"""splice-engine in-process: verified TLS for plain TCP code, without a sidecar.

An :class:`Engine` runs the splice-engine forwarding engine on its own threads inside this
process. Its forwarders accept plain TCP and forward it over TLS (client mode), or terminate
TLS and forward plain TCP (server mode); :meth:`Engine.connect` gives a ``socket.socket``
whose bytes leave as verified TLS, and :func:`open_connection` the asyncio form.

Tunnels: :func:`open_tunnel` and its siblings call a relay's tunnel API, and
:class:`Source` / :class:`Destination` run the two agents in-process.

Errors are :class:`Error` and its subclasses :class:`ConfigError`, :class:`TlsError`,
:class:`ConnectionError` and :class:`TunnelError`. The engine logs to the ``splice_engine`` logger of :mod:`logging`.
Every call that can block releases the GIL; an engine may be used from several threads.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import socket
import threading
import time
import weakref
from datetime import timedelta
from types import TracebackType
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from . import _native
from ._native import ConfigError, ConnectionError, Error, TlsError, TunnelError

__all__ = [
    "EXAMPLE_CONFIG",
    "ConfigError",
    "ConnectionError",
    "Destination",
    "Engine",
    "Error",
    "OpenedTunnel",
    "Source",
    "TlsError",
    "TunnelError",
    "close_tunnel",
    "describe_tunnel",
    "list_tunnels",
    "open_connection",
    "open_tunnel",
    "rotate_tunnel",
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

    def relay_addr(self, name: str) -> Optional[Tuple[str, int]]:
        """``(host, port)`` relay ``name`` (a ``[[relay]]`` of the configuration) takes
        agents on; ``None`` when no such relay runs."""
        return self._native.relay_addr(name)

    def relay_api_url(self, name: str) -> Optional[str]:
        """The URL of relay ``name``'s tunnel API (``http://HOST:PORT``), for
        :func:`open_tunnel` and its siblings; ``None`` when no such relay runs."""
        a = self._native.relay_api_addr(name)
        return None if a is None else f"http://{_host_port(*a)}"

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


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- tunnels: the relay's API ----


class OpenedTunnel:
    """A tunnel's id and the access tokens :func:`open_tunnel` or :func:`rotate_tunnel`
    gave (``None`` for a side a rotation left alone). Its ``repr`` hides the tokens."""

    __slots__ = ("id", "source_token", "destination_token")

    def __init__(
        self, id: str, source_token: Optional[str], destination_token: Optional[str]
    ) -> None:
        self.id = id
        self.source_token = source_token
        self.destination_token = destination_token

    def __repr__(self) -> str:
        return f"<splice_engine.OpenedTunnel {self.id} tokens=<redacted>>"

    @classmethod
    def _from(cls, answer: str) -> "OpenedTunnel":
        a = json.loads(answer)
        return cls(a["tunnelId"], a.get("sourceAccessToken"), a.get("destinationAccessToken"))


def open_tunnel(
    api: str,
    services: Sequence[str] = (),
    *,
    lifetime: Union[int, timedelta, None] = None,
    thing: Optional[str] = None,
    description: Optional[str] = None,
    api_token: Optional[str] = None,
) -> OpenedTunnel:
    """Opens a tunnel through the relay's tunnel API at ``api`` (``http://HOST:PORT``) for
    ``services`` (none: a V1 tunnel with one unnamed service), living ``lifetime`` (an ``int``:
    minutes; a :class:`datetime.timedelta`: to the second, as the CLI's ``--lifetime 90s``,
    a fraction of a second dropped; default: the relay's), for ``thing`` with a
    ``description``; ``api_token`` is the API's bearer token. Returns its id and both access
    tokens (shown this once). Raises :class:`TunnelError` when the API refuses or does not
    answer, naming the URL and the API's message; :class:`ConfigError` for a bad URL or a
    negative lifetime."""
    minutes: Optional[int] = None
    seconds: Optional[int] = None
    if isinstance(lifetime, timedelta):
        seconds = int(lifetime.total_seconds())
    else:
        minutes = lifetime
    amount = seconds if seconds is not None else minutes
    if amount is not None and amount < 0:
        raise ConfigError(f"open_tunnel(): the lifetime {lifetime!r} is negative")
    return OpenedTunnel._from(
        _native.api_open(api, api_token, list(services), minutes, thing, description, seconds)
    )


def list_tunnels(
    api: str, *, thing: Optional[str] = None, api_token: Optional[str] = None
) -> List[Dict[str, Any]]:
    """The tunnels (only ``thing``'s when given), newest first: the API's summaries
    (``tunnelId``, ``status``, ``thingName``, ``description``, ``createdAt``, ...)."""
    summaries: List[Dict[str, Any]] = json.loads(_native.api_list(api, api_token, thing))[
        "tunnelSummaries"
    ]
    return summaries


def describe_tunnel(api: str, id: str, *, api_token: Optional[str] = None) -> Dict[str, Any]:
    """Tunnel ``id`` as the API describes it: ``tunnelId``, ``status``,
    ``destinationConfig``, ``timeoutConfig``, ``sourceConnectionState``,
    ``destinationConnectionState``, ... Raises :class:`TunnelError` for an unknown id."""
    tunnel: Dict[str, Any] = json.loads(_native.api_describe(api, api_token, id))["tunnel"]
    return tunnel


def rotate_tunnel(
    api: str,
    id: str,
    side: str = "both",
    *,
    client_token: Optional[str] = None,
    api_token: Optional[str] = None,
) -> OpenedTunnel:
    """Replaces the access tokens of ``side`` (``"source"``, ``"destination"`` or
    ``"both"``); the old ones stop working and peers using them are dropped. With
    ``client_token``, only an agent that brings it may use the new ones."""
    return OpenedTunnel._from(_native.api_rotate(api, api_token, id, side, client_token))


def close_tunnel(
    api: str, id: str, *, delete: bool = False, api_token: Optional[str] = None
) -> None:
    """Closes tunnel ``id``: both agents get a close frame and finish, its tokens stop
    working; with ``delete`` it is forgotten too."""
    _native.api_close(api, api_token, id, delete)


# ---- tunnels: the agents ----

_AGENT = "agent"

_A = TypeVar("_A", bound="_Agent")


class _Agent:
    _kind = ""
    _addr_key = ""

    def __init__(
        self,
        relay: str,
        *,
        token: Optional[str] = None,
        services: Mapping[str, str],
        ca: Optional[StrPath] = None,
        sni: Optional[str] = None,
        client_token: Optional[str] = None,
        driver: Optional[str] = None,
        ca_pem: Optional[str] = None,
        pin: Optional[Sequence[str]] = None,
        token_file: Optional[StrPath] = None,
        client_token_file: Optional[StrPath] = None,
    ) -> None:
        agent: Dict[str, Any] = {
            "name": _AGENT,
            "relay": relay,
            self._addr_key: [f"{n}={a}" if n else a for n, a in services.items()],
        }
        if token is not None:
            agent["token"] = token
        if token_file is not None:
            agent["token_file"] = os.fspath(token_file)
        if client_token_file is not None:
            agent["client_token_file"] = os.fspath(client_token_file)
        if ca is not None:
            agent["ca"] = os.fspath(ca)
        if ca_pem is not None:
            agent["ca_pem"] = ca_pem
        if sni is not None:
            agent["sni"] = sni
        if pin is not None:
            agent["pin"] = list(pin)
        if client_token is not None:
            agent["client_token"] = client_token
        settings: Dict[str, Any] = {"threads": 1, self._kind: [agent]}
        if driver is not None:
            settings["driver"] = driver
        self._engine = Engine(**settings)

    def __enter__(self: _A) -> _A:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<splice_engine.{type(self).__name__} {self.state}>"

    def _state(self) -> Tuple[str, str]:
        if self._engine.closed:
            return ("stopped", "")
        s = self._engine._native.agent_state(_AGENT)
        return s if s is not None else ("stopped", "")

    @property
    def state(self) -> str:
        """``"connecting"`` (the first time), ``"connected"``, ``"reconnecting"`` (lost
        the tunnel connection or failed to make it, and retrying by itself), ``"finished"``
        (gave up: see :attr:`reason`) or ``"stopped"``."""
        return self._state()[0]

    @property
    def reason(self) -> str:
        """Why the agent finished (the tunnel was closed, the relay refused its token, ...);
        ``""`` unless finished. Never holds a token."""
        return self._state()[1]

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Waits up to ``timeout`` seconds for the tunnel connection; raises
        :class:`TunnelError` if the agent finished or the time ran out."""
        end = time.monotonic() + timeout
        while True:
            state, reason = self._state()
            if state == "connected":
                return
            if state in ("finished", "stopped"):
                raise TunnelError(f"the {self._kind} agent {state}: {reason}")
            if time.monotonic() > end:
                raise TunnelError(f"the {self._kind} agent is not connected after {timeout} s")
            time.sleep(0.02)

    def wait_finished(self, timeout: float) -> str:
        """Waits up to ``timeout`` seconds for the agent to give up; its state then."""
        if not self._engine.closed:
            self._engine._native.wait_agent_finished(timeout)
        return self.state

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._engine.closed

    def close(self, drain: float = 5.0) -> None:
        """Stops the agent: its local connections get ``drain`` seconds to end, then it
        closes them and its tunnel connection. Later calls do nothing."""
        self._engine.close(drain)


class Source(_Agent):
    """A source agent in-process: for each ``services`` entry ``NAME: "IP:PORT"`` it listens
    on the address (port 0 picks one: see :meth:`address`) and carries the connections it
    accepts through the relay at ``relay`` (``HOST:PORT``, TLS verified against ``ca``, a PEM
    file, or ``ca_pem``, PEM text, else the system's roots, for the name ``sni``; or ``pin``,
    ``["sha256:..."]`` hashes of the keys or certificates to trust instead of a CA, as a
    self-signed relay needs) to the tunnel's destination, with the source access ``token``
    (``client_token`` when the token is bound to one). ``token_file`` and
    ``client_token_file`` read them from files instead (surrounding whitespace is ignored),
    keeping them out of the program; with neither ``token`` nor ``token_file`` the token comes
    from the environment variable ``AWSIOT_TUNNEL_ACCESS_TOKEN``. A V1 tunnel's one service
    has the name ``""``.

    It connects in the background and reconnects by itself; a wrong token or a closed
    tunnel shows as :attr:`state` ``"finished"`` with a :attr:`reason`. Use it as a context
    manager, or call :meth:`close`. Raises :class:`ConfigError`, :class:`TlsError` or
    :class:`ConnectionError` for bad settings (``ca`` and ``ca_pem`` together), a bad CA
    file or PEM text, or an address in use."""

    _kind = "source"
    _addr_key = "listen"

    def address(self, service: str) -> Tuple[str, int]:
        """``(host, port)`` the agent listens on for ``service``."""
        a = self._engine._native.source_addr(_AGENT, service)
        if a is None:
            raise ConfigError(f"the source has no service {service!r}")
        return a


class Destination(_Agent):
    """A destination agent in-process: it connects out to the relay at ``relay``
    (``HOST:PORT``, TLS verified against ``ca``, ``ca_pem`` or ``pin`` for the name ``sni``) with the
    destination access ``token``, and connects each stream of service ``NAME`` to ``services[NAME]``
    (``"HOST:PORT"``). Otherwise as :class:`Source`."""

    _kind = "destination"
    _addr_key = "connect"


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

