"""Tunnels through our relay (an Engine with a ``[[relay]]``, started here), opened with the
tunnel API functions, with both agents started from Python; payloads checked by SHA-256.

The tunnel protocol has no half-close (a stream ends whole, as in AWS's), so the payloads go
to an echo service and are read back while they are sent, rather than answered after end of
file as ``conftest.Backend`` does."""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

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


def test_lifetime_in_seconds(relay: Tuple[str, str]) -> None:
    """A ``timedelta`` lifetime keeps its seconds (an ``int`` is whole minutes, as before)."""
    _, api = relay
    t = splice_engine.open_tunnel(api, ["echo"], lifetime=datetime.timedelta(seconds=90))
    timeout = splice_engine.describe_tunnel(api, t.id)["timeoutConfig"]
    assert timeout["maxLifetimeTimeoutSeconds"] == 90, timeout
    t = splice_engine.open_tunnel(api, ["echo"], lifetime=3)
    timeout = splice_engine.describe_tunnel(api, t.id)["timeoutConfig"]
    assert timeout["maxLifetimeTimeoutSeconds"] == 180, timeout
    with pytest.raises(splice_engine.ConfigError, match="negative"):
        splice_engine.open_tunnel(api, ["echo"], lifetime=datetime.timedelta(seconds=-5))
    with pytest.raises(splice_engine.ConfigError, match="not both"):
        splice_engine._native.api_open(api, None, ["echo"], 1, None, None, 60)


def test_tunnel_through_our_relay(relay: Tuple[str, str], pki: Pki, echo: Echo) -> None:
    relay_addr, api = relay
    t = splice_engine.open_tunnel(api, ["echo"], lifetime=30, thing="pump-7", description="py")
    assert t.source_token and t.destination_token
    assert t.source_token not in repr(t) and t.destination_token not in repr(t)
    assert [s["tunnelId"] for s in splice_engine.list_tunnels(api, thing="pump-7")] == [t.id]
    # The destination trusts the relay's certificate by its pin (hex of the whole
    # certificate's SHA-256) instead of a CA.
    der = ssl.PEM_cert_to_DER_cert(pki.cert.read_text())
    with splice_engine.Destination(
        relay_addr,
        pin=[f"sha256:{hashlib.sha256(der).hexdigest()}"],
        sni="localhost",
        token=t.destination_token,
        services={"echo": f"127.0.0.1:{echo.port}"},
    ) as dst, splice_engine.Source(
        relay_addr,
        ca_pem=pki.ca.read_text(),
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


def test_tunnel_errors(relay: Tuple[str, str], pki: Pki, tmp_path: Path) -> None:
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
    with pytest.raises(splice_engine.ConfigError, match="`ca` and `ca_pem` exclude each other"):
        splice_engine.Source(
            relay_addr, ca=pki.ca, ca_pem=pki.ca.read_text(), token="t",
            services={"x": "127.0.0.1:0"},
        )
    # PEM text without a certificate: a certificate error, which says where it was set.
    with pytest.raises(splice_engine.TlsError, match="no PEM certificate found.*`ca_pem`"):
        splice_engine.Source(
            relay_addr, ca_pem="not PEM", token="t", services={"x": "127.0.0.1:0"}
        )
    # A token file that is not there, or holds nothing: the key and the file, never a token.
    missing = tmp_path / "missing.token"
    with pytest.raises(splice_engine.ConfigError, match="`token_file` .*missing.token: cannot read"):
        splice_engine.Source(relay_addr, ca=pki.ca, token_file=missing, services={"x": "127.0.0.1:0"})
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    with pytest.raises(splice_engine.ConfigError, match="`client_token_file` .*empty.token: it is empty"):
        splice_engine.Destination(
            relay_addr, ca=pki.ca, token="t", client_token_file=empty,
            services={"x": "127.0.0.1:1"},
        )
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


# A relay in a child process (killed without a close frame, as a crash or a reboot would end
# it), its tunnels in a SQLite file so that a new one on the same ports knows them.
RELAY_CHILD = """
import sys
import splice_engine
cert, key, state, port, api_port, driver = sys.argv[1:]
with splice_engine.Engine(
    f'threads = 1\\ndriver = "{driver}"\\naccess_log = false\\n'
    f'[[relay]]\\nname = "r"\\nlisten = "127.0.0.1:{port}"\\ncert = "{cert}"\\n'
    f'key = "{key}"\\napi = "127.0.0.1:{api_port}"\\nstate = "{state}"\\n'
) as e:
    print(e.relay_addr("r")[1], e.relay_api_url("r"), flush=True)
    sys.stdin.read()
"""


class RelayProcess:
    """``RELAY_CHILD`` run by this interpreter: started, killed, started again."""

    def __init__(self, pki: Pki, state: str, driver: str) -> None:
        self.args = [str(pki.cert), str(pki.key), state]
        self.driver = driver
        self.port = 0
        self.api_port = 0
        self.api = ""
        self.proc: Optional["subprocess.Popen[str]"] = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RELAY_CHILD, *self.args, str(self.port), str(self.api_port),
             self.driver],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        port, self.api = self.proc.stdout.readline().split()
        self.port = int(port)
        self.api_port = int(self.api.rsplit(":", 1)[1])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(SOON)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.proc = None


def wait_state(agent: splice_engine.Source | splice_engine.Destination, want: str) -> None:
    end = time.monotonic() + SOON * 3
    while agent.state != want:
        assert time.monotonic() < end, f"{agent!r}: not {want} after {SOON * 3} s"
        time.sleep(0.02)


@pytest.mark.parametrize("driver", DRIVERS)
def test_agents_reconnect_when_the_relay_comes_back(
    driver: str, pki: Pki, echo: Echo, tmp_path: Path
) -> None:
    relay = RelayProcess(pki, str(tmp_path / "relay.sqlite"), driver)
    relay.start()
    try:
        t = splice_engine.open_tunnel(relay.api, ["echo"])
        # Tokens bound to a client token: an agent may come back with them.
        client = "py-test-client-token-0123456789-abcdef"
        r = splice_engine.rotate_tunnel(relay.api, t.id, "both", client_token=client)
        relay_addr = f"127.0.0.1:{relay.port}"
        # The destination reads both tokens from files (as a device keeps them).
        token_file = tmp_path / "destination.token"
        token_file.write_text((r.destination_token or "") + "\n")
        client_file = tmp_path / "client.token"
        client_file.write_text(client + "\n")
        with splice_engine.Destination(
            relay_addr, ca=pki.ca, sni="localhost", token_file=token_file,
            client_token_file=client_file, services={"echo": f"127.0.0.1:{echo.port}"},
        ) as dst, splice_engine.Source(
            relay_addr, ca=pki.ca, sni="localhost", token=r.source_token or "",
            client_token=client, services={"echo": "127.0.0.1:0"},
        ) as src:
            dst.wait_connected(SOON)
            src.wait_connected(SOON)
            echoed(src.address("echo"), 100_000)
            relay.kill()
            wait_state(src, "reconnecting")
            wait_state(dst, "reconnecting")
            relay.start()
            wait_state(dst, "connected")
            wait_state(src, "connected")
            echoed(src.address("echo"), 100_000)
            splice_engine.close_tunnel(relay.api, t.id)
            assert src.wait_finished(SOON) == "finished"
    finally:
        if relay.proc is not None:
            relay.kill()
