"""Engine.connect(): a socket.socket whose bytes leave as verified TLS."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

import splice_engine
from conftest import DRIVERS, SOON, Backend, Pki, SServer, hashed_roundtrip, recv_all


def tls_front(engine: splice_engine.Engine, pki: Pki, backend: Backend, name: str) -> int:
    """Adds a server-mode forwarder (TLS in, plain out to ``backend``); returns its port."""
    engine.add_forwarder(
        name=name, mode="server", listen="127.0.0.1:0",
        connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
    )
    addr = engine.local_addr(name)
    assert addr is not None
    return addr[1]


@pytest.mark.parametrize("driver", DRIVERS)
def test_connect_to_openssl_s_server(driver: str, pki: Pki, s_server: SServer) -> None:
    lines = [os.urandom(48).hex().encode() for _ in range(200)]
    with splice_engine.Engine(threads=1, driver=driver) as engine:
        assert engine.driver == driver
        with engine.connect("localhost", s_server.port, ca=pki.ca) as sock:
            assert isinstance(sock, socket.socket)
            sock.settimeout(SOON)
            sock.sendall(b"".join(line + b"\n" for line in lines))
            want = b"".join(line[::-1] + b"\n" for line in lines)
            got = bytearray()
            deadline = time.monotonic() + SOON
            while len(got) < len(want) and time.monotonic() < deadline:
                b = sock.recv(65536)
                if not b:
                    break
                got += b
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
        [s] = engine.stats()
        assert s["mode"] == "client" and s["accepted"] == 1
        assert s["bytes_down_to_up"] == sum(len(line) + 1 for line in lines)


@pytest.mark.parametrize("driver", DRIVERS)
def test_connect_to_our_server_mode(driver: str, pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=2, driver=driver) as engine:
        port = tls_front(engine, pki, backend, "front")
        for size in (0, 1, 100_000, 3_000_000):
            with engine.connect("127.0.0.1", port, ca=pki.ca, sni="localhost") as sock:
                hashed_roundtrip(sock, size)
        stats = {s["name"]: s for s in engine.stats()}
        # One connector for the four calls (same options), and the server side saw them all.
        connectors = [s for s in stats.values() if s["name"].startswith("connect-")]
        assert len(connectors) == 1 and connectors[0]["accepted"] == 4
        assert stats["front"]["accepted"] == 4
        assert stats["front"]["bytes_down_to_up"] == 3_100_001
        assert stats["front"]["handshakes"]["count"] == 4


def test_connectors_are_cached_by_options(pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=1) as engine:
        port = tls_front(engine, pki, backend, "front")
        for _ in range(3):
            with engine.connect("127.0.0.1", port, ca=pki.ca, sni="localhost") as s:
                hashed_roundtrip(s, 10)
        with engine.connect("localhost", port, ca=pki.ca, alpn=["x"]) as s:
            # Other options, another connector (the server takes no ALPN: none is agreed).
            hashed_roundtrip(s, 10)
        names = sorted(s["name"] for s in engine.stats() if s["name"].startswith("connect-"))
        assert names == [f"connect-1 127.0.0.1:{port}", f"connect-2 localhost:{port}"]


@pytest.mark.parametrize("driver", DRIVERS)
def test_verification_failure_is_end_of_file_and_counted(
    driver: str, pki: Pki, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="splice_engine")
    with splice_engine.Engine(threads=1, driver=driver) as engine:
        port = tls_front(engine, pki, backend, "front")
        with engine.connect("localhost", port, ca=pki.other_ca) as sock:
            sock.settimeout(SOON)
            try:
                sock.sendall(b"never delivered")
                assert recv_all(sock) == b""
            except (ConnectionResetError, BrokenPipeError):
                pass
        deadline = time.monotonic() + SOON
        while time.monotonic() < deadline:
            [c] = [s for s in engine.stats() if s["name"].startswith("connect-")]
            if c["errors_tls"] == 1:
                break
            time.sleep(0.05)
        assert c["errors_tls"] == 1
    assert backend.connections == 0
    failed = [r for r in caplog.records if "connection failed" in r.getMessage()]
    assert failed and failed[0].levelname == "WARNING"
    assert "side=tls" in failed[0].getMessage()


def test_open_through_a_configured_forwarder(pki: Pki, backend: Backend) -> None:
    toml = f"""
threads = 1
[[forwarder]]
name = "front"
mode = "server"
listen = "127.0.0.1:0"
connect = "127.0.0.1:{backend.port}"
cert = "{pki.cert}"
key = "{pki.key}"
"""
    with splice_engine.Engine(toml) as engine:
        addr = engine.local_addr("front")
        assert addr is not None
        engine.add_forwarder(
            name="out", mode="client", connect=f"localhost:{addr[1]}", ca=pki.ca
        )
        assert engine.local_addr("out") is None
        with engine.open("out") as sock:
            hashed_roundtrip(sock, 70_000)


def test_a_removed_connector_is_added_again(pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=1) as engine:
        port = tls_front(engine, pki, backend, "front")
        with engine.connect("localhost", port, ca=pki.ca) as s:
            hashed_roundtrip(s, 10)
        with engine.connect("localhost", port, ca=pki.ca, sni="localhost") as s:
            hashed_roundtrip(s, 10)
        engine.remove_forwarder(f"connect-1 localhost:{port}")
        # Other options after a removal: a name of its own, not a clash with connect-2.
        for host in ("localhost", "localhost"):
            with engine.connect(host, port, ca=pki.ca, alpn=["h2"]) as s:
                hashed_roundtrip(s, 10)
        with engine.connect("localhost", port, ca=pki.ca) as s:
            hashed_roundtrip(s, 10)
        names = sorted(s["name"] for s in engine.stats() if s["name"] != "front")
        assert names == [
            f"connect-2 localhost:{port}",
            f"connect-3 localhost:{port}",
            f"connect-4 localhost:{port}",
        ]


def test_ca_as_pem_text(pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=1) as engine:
        port = tls_front(engine, pki, backend, "front")
        with engine.connect("localhost", port, ca_pem=pki.ca.read_text()) as s:
            hashed_roundtrip(s, 5000)
        with pytest.raises(splice_engine.ConfigError, match="`ca` and `ca_pem` exclude each other"):
            engine.connect("localhost", port, ca=pki.ca, ca_pem=pki.ca.read_text())
        with pytest.raises(splice_engine.TlsError, match="ca_pem"):
            engine.connect("localhost", port, ca_pem="not a certificate\n")
