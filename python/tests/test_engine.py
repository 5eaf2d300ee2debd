"""Engine: configurations, several forwarders, stats, reload calls, logs."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

import splice_engine
from conftest import DRIVERS, SOON, Backend, Pki, hashed_roundtrip
from splice_engine import ConfigError


def test_the_installed_package_is_tested() -> None:
    # `cargo xtask py-test` runs pytest outside the source tree, on the wheel it installed.
    assert "site-packages" in splice_engine.__file__
    assert (Path(splice_engine.__file__).parent / "py.typed").exists()


@pytest.mark.parametrize("driver", DRIVERS)
def test_several_forwarders(driver: str, pki: Pki, tmp_path: Path) -> None:
    b1, b2 = Backend(), Backend()
    try:
        with splice_engine.Engine(
            threads=2,
            driver=driver,
            drain_timeout=1.5,
            forwarders=[
                dict(name=f"s{i}", mode="server", listen="127.0.0.1:0",
                     connect=f"127.0.0.1:{b.port}", cert=pki.cert, key=pki.key,
                     handshake_timeout=3)
                for i, b in ((1, b1), (2, b2))
            ],
        ) as engine:
            ports = {}
            for name in ("s1", "s2"):
                addr = engine.local_addr(name)
                assert addr is not None and addr[0] == "127.0.0.1"
                ports[name] = addr[1]
            # A listening client-mode forwarder in front of s2: plain TCP in.
            engine.add_forwarder(
                name="c2", mode="client", listen="127.0.0.1:0",
                connect=f"localhost:{ports['s2']}", ca=pki.ca,
            )
            c2 = engine.local_addr("c2")
            assert c2 is not None
            with socket.create_connection(c2) as plain:
                hashed_roundtrip(plain, 12345)
            with engine.connect("localhost", ports["s1"], ca=pki.ca) as s:
                hashed_roundtrip(s, 777)
            assert (b1.connections, b2.connections) == (1, 1)

            # Replace s1 to forward to b2 (the same `listen` keeps its listener); remove c2.
            engine.replace_forwarder(
                name="s1", mode="server", listen="127.0.0.1:0",
                connect=f"127.0.0.1:{b2.port}", cert=pki.cert, key=pki.key,
            )
            assert engine.local_addr("s1") == ("127.0.0.1", ports["s1"])
            with engine.connect("localhost", ports["s1"], ca=pki.ca) as s:
                hashed_roundtrip(s, 1)
            assert (b1.connections, b2.connections) == (1, 2)
            stats = {s["name"]: s for s in engine.stats()}
            assert set(stats) == {"s1", "s2", "c2", f"connect-1 localhost:{ports['s1']}"}
            assert stats["s1"]["accepted"] == 2 and stats["s2"]["accepted"] == 1
            assert stats["s2"]["bytes_down_to_up"] == 12345
            assert stats["s1"]["mode"] == "server"
            assert isinstance(stats["s1"]["cert_not_after"], int)
            engine.remove_forwarder("c2")
            assert engine.local_addr("c2") is None
            # The shards close the listener soon after the call returns.
            deadline = time.monotonic() + SOON
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(c2, timeout=5).close()
                except ConnectionRefusedError:
                    break
                time.sleep(0.02)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(c2, timeout=5).close()
    finally:
        b1.close()
        b2.close()


def test_from_file(pki: Pki, backend: Backend, tmp_path: Path) -> None:
    # Paths in a file are relative to it.
    (tmp_path / "cert.pem").write_bytes(pki.cert.read_bytes())
    (tmp_path / "key.pem").write_bytes(pki.key.read_bytes())
    conf = tmp_path / "splice.toml"
    conf.write_text(
        f'threads = 1\n[[forwarder]]\nname = "f"\nmode = "server"\nlisten = "127.0.0.1:0"\n'
        f'connect = "127.0.0.1:{backend.port}"\ncert = "cert.pem"\nkey = "key.pem"\n'
    )
    with splice_engine.Engine(file=conf) as engine:
        addr = engine.local_addr("f")
        assert addr is not None
        with engine.connect("localhost", addr[1], ca=pki.ca) as s:
            hashed_roundtrip(s, 4096)


def test_example_config_is_the_files_keys() -> None:
    assert "[[forwarder]]" in splice_engine.EXAMPLE_CONFIG


def test_logs_go_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="splice_engine")
    with splice_engine.Engine(threads=1) as engine:
        engine.add_forwarder(name="c", mode="client", connect="localhost:1")
    messages = [r.getMessage() for r in caplog.records if r.name == "splice_engine"]
    assert any(m.startswith("forwarders changed") and "call=add_forwarder" in m for m in messages)
    assert any(m == "stopped" for m in messages)

    # Below the logger's level, nothing is forwarded.
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="splice_engine")
    with splice_engine.Engine(threads=1):
        pass
    assert [r for r in caplog.records if r.name == "splice_engine"] == []


def test_reload(pki: Pki, tmp_path: Path) -> None:
    b1, b2 = Backend(), Backend()
    try:
        def server(name: str, b: Backend) -> "dict[str, object]":
            return dict(name=name, mode="server", listen="127.0.0.1:0",
                        connect=f"127.0.0.1:{b.port}", cert=pki.cert, key=pki.key)

        with splice_engine.Engine(threads=1, forwarders=[server("a", b1)]) as engine:
            a = engine.local_addr("a")
            assert a is not None
            with engine.connect("localhost", a[1], ca=pki.ca) as s:
                hashed_roundtrip(s, 100)
            engine.reload(threads=1, forwarders=[server("a", b2), server("b", b1)])
            b = engine.local_addr("b")
            assert b is not None and engine.local_addr("a") == a
            # The connector went with the old configuration; connect adds it again.
            assert sorted(s["name"] for s in engine.stats()) == ["a", "b"]
            with engine.connect("localhost", a[1], ca=pki.ca) as s:
                hashed_roundtrip(s, 100)
            with engine.connect("localhost", b[1], ca=pki.ca) as s:
                hashed_roundtrip(s, 100)
            assert (b1.connections, b2.connections) == (2, 1)
            # A wrong configuration changes nothing.
            with pytest.raises(ConfigError, match=r'forwarder "a".*`lisen`|unknown field `lisen`'):
                engine.reload(threads=1, forwarders=[dict(name="a", mode="server", lisen="x")])
            with pytest.raises(ConfigError, match="not several"):
                engine.reload("threads = 1", file=tmp_path / "x.toml")
            assert engine.local_addr("b") == b
    finally:
        b1.close()
        b2.close()
