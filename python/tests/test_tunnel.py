"""Tunnels through our relay (an Engine with a ``[[relay]]``, started here), opened with the
tunnel API functions, with both agents started from Python; payloads checked by SHA-256.

The tunnel protocol has no half-close (a stream ends whole, as in AWS's), so the payloads go
to an echo service and are read back while they are sent, rather than answered after end of
file as ``conftest.Backend`` does."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import Iterator, List, Tuple

import pytest

import splice_engine
from conftest import DRIVERS, SOON, Pki


class Echo:
    """A plain TCP echo service on loopback, a thread per connection; counts them."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(SOON)
            try:
                while True:
                    b = conn.recv(65536)
                    if not b:
                        return
                    conn.sendall(b)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(SOON)
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.close()


def echoed(addr: Tuple[str, int], size: int) -> None:
    """Sends ``size`` random bytes through ``addr`` to the echo service while reading them
    back; the SHA-256 of what came back must be theirs."""
    payload = os.urandom(size)
    with socket.create_connection(addr, timeout=SOON) as s:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        h = hashlib.sha256()
        got = 0
        while got < size:
            b = s.recv(65536)
            assert b, f"end of file after {got} of {size} bytes"
            h.update(b)
            got += len(b)
        sender.join(SOON)
    assert got == size and h.digest() == hashlib.sha256(payload).digest()


def relay_engine(pki: Pki, driver: str) -> splice_engine.Engine:
    return splice_engine.Engine(
        f'threads = 2\ndriver = "{driver}"\naccess_log = false\n'
        f'[[relay]]\nname = "r"\nlisten = "127.0.0.1:0"\ncert = "{pki.cert}"\n'
        f'key = "{pki.key}"\napi = "127.0.0.1:0"\nstate = ":memory:"\n'
    )


@pytest.fixture(params=DRIVERS)
def relay(request: pytest.FixtureRequest, pki: Pki) -> Iterator[Tuple[str, str]]:
    """``(agents' HOST:PORT, API URL)`` of a relay on the driver."""
    with relay_engine(pki, request.param) as e:
        host, port = e.relay_addr("r") or ("", 0)
        url = e.relay_api_url("r")
        assert url is not None and port != 0
        yield f"{host}:{port}", url


def test_tunnel_through_our_relay(relay: Tuple[str, str], pki: Pki, echo: Echo) -> None:
    relay_addr, api = relay
    t = splice_engine.open_tunnel(api, ["echo"], lifetime=30, thing="pump-7", description="py")
    assert t.source_token and t.destination_token
    assert t.source_token not in repr(t) and t.destination_token not in repr(t)
    assert [s["tunnelId"] for s in splice_engine.list_tunnels(api, thing="pump-7")] == [t.id]
    with splice_engine.Destination(
        relay_addr,
        ca=pki.ca,
        sni="localhost",
        token=t.destination_token,
        services={"echo": f"127.0.0.1:{echo.port}"},
    ) as dst, splice_engine.Source(
        relay_addr,
        ca=pki.ca,
        sni="localhost",
        token=t.source_token,
        services={"echo": "127.0.0.1:0"},
    ) as src:
        dst.wait_connected(SOON)
        src.wait_connected(SOON)
        assert dst.state == src.state == "connected"
        d = splice_engine.describe_tunnel(api, t.id)
        assert d["tunnelId"] == t.id and d["destinationConfig"]["services"] == ["echo"]
        addr = src.address("echo")
        with pytest.raises(splice_engine.ConfigError, match="nope"):
            src.address("nope")

        errors: List[BaseException] = []

        def one(size: int) -> None:
            try:
                echoed(addr, size)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(n,)) for n in (1, 70_000, 1 << 20, 3 << 20)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(SOON * 3)
        assert not errors, errors
        assert echo.connections == 4

        # Closing the tunnel finishes both agents, with the reason.
        splice_engine.close_tunnel(api, t.id)
        assert src.wait_finished(SOON) == "finished"
        assert dst.wait_finished(SOON) == "finished"
        assert "closed" in src.reason, src.reason
    assert src.state == "stopped" and src.closed


def test_tunnel_errors(relay: Tuple[str, str], pki: Pki) -> None:
    relay_addr, api = relay
    # A token the relay does not know: the agent finishes, saying why, without the token.
    bad = "not-a-token-of-this-relay"
    with splice_engine.Source(
        relay_addr, ca=pki.ca, sni="localhost", token=bad, services={"x": "127.0.0.1:0"}
    ) as src:
        assert src.wait_finished(SOON) == "finished"
        assert "403" in src.reason and bad not in src.reason, src.reason
        with pytest.raises(splice_engine.TunnelError, match="finished"):
            src.wait_connected(1.0)
    with pytest.raises(splice_engine.TunnelError, match="404") as e:
        splice_engine.describe_tunnel(api, "no-such-tunnel")
    assert api in str(e.value)
    with pytest.raises(splice_engine.ConfigError, match="https is not supported"):
        splice_engine.list_tunnels("https://127.0.0.1:1")
    with pytest.raises(splice_engine.ConfigError, match="side"):
        splice_engine.rotate_tunnel(api, "x", "left")
    with pytest.raises(splice_engine.ConfigError, match="no-port-here"):
        splice_engine.Destination("no-port-here", token="t", services={"x": "127.0.0.1:1"})
    # Rotation: new tokens, the old ones refused.
    t = splice_engine.open_tunnel(api, ["x"])
    r = splice_engine.rotate_tunnel(api, t.id, "source")
    assert r.id == t.id and r.source_token and r.source_token != t.source_token
    assert r.destination_token is None
    with splice_engine.Source(
        relay_addr, ca=pki.ca, sni="localhost", token=t.source_token or "",
        services={"x": "127.0.0.1:0"},
    ) as old:
        assert old.wait_finished(SOON) == "finished"
    splice_engine.close_tunnel(api, t.id, delete=True)
    assert all(s["tunnelId"] != t.id for s in splice_engine.list_tunnels(api))
