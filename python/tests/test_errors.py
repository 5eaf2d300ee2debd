"""Every error path: the exception class, and a message that names the file, key, forwarder
or address."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

import splice_engine
from splice_engine import ConfigError, ConnectionError, Error, TlsError
from conftest import SOON, Backend, Pki, hashed_roundtrip


def test_hierarchy() -> None:
    for cls in (ConfigError, TlsError, ConnectionError):
        assert issubclass(cls, Error) and issubclass(cls, Exception)
    assert not issubclass(ConnectionError, ConfigError)


def test_toml_string_errors_name_the_line_and_key() -> None:
    with pytest.raises(ConfigError, match=r"TOML string: .*line 3.*threads"):
        splice_engine.Engine('log_level = "info"\n\nthreads = "two"\n')
    with pytest.raises(ConfigError, match=r"TOML string: .*unknown field `bogus`"):
        splice_engine.Engine("bogus = 1\n")
    with pytest.raises(ConfigError, match=r"`threads` must be at least 1"):
        splice_engine.Engine("threads = 0\n")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('threads = 1\n[[forwarder]]\nmode = "client"\nlisten = "127.0.0.1:0"\n')
    with pytest.raises(ConfigError, match=rf"{conf}: line 2.*connect"):
        splice_engine.Engine(file=conf)
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"{missing}: cannot read"):
        splice_engine.Engine(file=missing)


def test_keyword_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"keyword arguments: .*unknown field `thread`"):
        splice_engine.Engine(thread=1)
    with pytest.raises(ConfigError, match=r"driver"):
        splice_engine.Engine(driver="carrier-pigeon")
    with pytest.raises(ConfigError, match=r"`bogus`: a value of type object is not a setting"):
        splice_engine.Engine(bogus=object())
    with pytest.raises(ConfigError, match=r"not several"):
        splice_engine.Engine("threads = 1", threads=1)


def test_forwarder_errors(pki: Pki, tmp_path: Path) -> None:
    with splice_engine.Engine(threads=1) as engine:
        with pytest.raises(ConfigError, match=r'forwarder "f": .*unknown field `lisen`'):
            engine.add_forwarder(name="f", mode="client", lisen="x", connect="a:1")
        with pytest.raises(ConfigError, match=r"connect"):
            engine.add_forwarder(name="f", mode="client", connect="no-port")
        with pytest.raises(ConfigError, match=r'"f": .*`-1`.* in `max_connections`'):
            engine.add_forwarder(name="f", mode="client", connect="a:1", max_connections=-1)
        with pytest.raises(ConfigError, match=r'"f": .*"5 parsecs".* in `connect_timeout`'):
            engine.add_forwarder(name="f", mode="client", connect="a:1", connect_timeout="5 parsecs")
        with pytest.raises(ConfigError, match=r'"f": .*`sideways`.* in `mode`'):
            engine.add_forwarder(name="f", mode="sideways", connect="a:1")
        missing = tmp_path / "missing.pem"
        with pytest.raises(TlsError, match=rf"{missing}"):
            engine.add_forwarder(
                name="s", mode="server", listen="127.0.0.1:0", connect="127.0.0.1:1",
                cert=missing, key=pki.key,
            )
        engine.add_forwarder(name="f", mode="client", connect="localhost:1")
        with pytest.raises(ConfigError, match=r'"f" is already running'):
            engine.add_forwarder(name="f", mode="client", connect="localhost:2")
        with pytest.raises(ConfigError, match=r'no forwarder is named "g"'):
            engine.remove_forwarder("g")
        with pytest.raises(ConfigError, match=r'no forwarder is named "g"'):
            engine.replace_forwarder(name="g", mode="client", connect="localhost:1")
        with pytest.raises(ConfigError, match=r'no forwarder is named "g"'):
            engine.open("g")
        # Nothing changed on those errors.
        assert [s["name"] for s in engine.stats()] == ["f"]


def test_an_upstream_name_that_does_not_resolve() -> None:
    """Refused by default, saying how to start anyway; with ``unresolved_upstream="reset"``
    the forwarder starts and resets each connection, counted as an upstream error."""
    with splice_engine.Engine(threads=1) as engine:
        with pytest.raises(ConfigError, match=r"nothing\.invalid.*cannot resolve.*unresolved_upstream"):
            engine.add_forwarder(
                name="f", mode="client", listen="127.0.0.1:0", connect="nothing.invalid:1"
            )
        engine.add_forwarder(
            name="f", mode="client", listen="127.0.0.1:0", connect="nothing.invalid:1",
            unresolved_upstream="reset",
        )
        addr = engine.local_addr("f")
        assert addr is not None
        with socket.create_connection(addr, timeout=SOON) as s:
            try:
                s.sendall(b"hello")
                assert s.recv(16) == b""
            except ConnectionResetError:
                pass
        deadline = time.monotonic() + SOON
        while engine.stats()[0]["errors_upstream"] != 1:
            assert time.monotonic() < deadline, engine.stats()
            time.sleep(0.01)


def test_address_in_use_names_the_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with splice_engine.Engine(threads=1) as engine:
            with pytest.raises(ConnectionError, match=rf"cannot listen on 127.0.0.1:{port}"):
                engine.add_forwarder(
                    name="c", mode="client", listen=f"127.0.0.1:{port}", connect="localhost:1"
                )


def test_connect_errors(pki: Pki, tmp_path: Path) -> None:
    with splice_engine.Engine(threads=1) as engine:
        missing = tmp_path / "ca.pem"
        with pytest.raises(TlsError, match=rf"{missing}"):
            engine.connect("localhost", 1, ca=missing)
        not_pem = tmp_path / "not.pem"
        not_pem.write_text("hello\n")
        with pytest.raises(TlsError, match=rf"{not_pem}"):
            engine.connect("localhost", 1, ca=not_pem)
        with pytest.raises(ConfigError, match=r"`cert` and `key` go together"):
            engine.connect("localhost", 1, ca=pki.ca, cert=pki.cert)
        with pytest.raises(OverflowError):
            engine.connect("localhost", 70000)
        # A failed connector is not kept: the next call tries again.
        assert engine.stats() == []


def test_server_mode_forwarder_is_not_a_connector(pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=1) as engine:
        engine.add_forwarder(
            name="s", mode="server", listen="127.0.0.1:0",
            connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
        )
        with pytest.raises(ConfigError, match=r'"s" is in server mode'):
            engine.open("s")


def test_max_connections(pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=1) as engine:
        engine.add_forwarder(
            name="s", mode="server", listen="127.0.0.1:0",
            connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
        )
        addr = engine.local_addr("s")
        assert addr is not None
        engine.add_forwarder(
            name="c", mode="client", connect=f"localhost:{addr[1]}", ca=pki.ca,
            max_connections=1,
        )
        first = engine.open("c")
        with pytest.raises(ConnectionError, match=r'"c" has max_connections \(1\) open'):
            engine.open("c")
        hashed_roundtrip(first, 10)
        first.close()
        # Once the first has ended, there is room again.
        deadline = time.monotonic() + SOON
        while [s["active"] for s in engine.stats() if s["name"] == "c"] != [0]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with engine.open("c") as again:
            hashed_roundtrip(again, 10)
        [c] = [s for s in engine.stats() if s["name"] == "c"]
        assert (c["accepted"], c["refused"]) == (2, 1)


def test_closed_engine() -> None:
    engine = splice_engine.Engine(threads=1)
    engine.close()
    assert engine.closed
    engine.close()  # twice is fine
    for call in (
        lambda: engine.connect("localhost", 1),
        lambda: engine.stats(),
        lambda: engine.add_forwarder(name="f", mode="client", connect="localhost:1"),
        lambda: engine.remove_forwarder("f"),
        lambda: engine.local_addr("f"),
    ):
        with pytest.raises(ConnectionError, match="the engine is closed"):
            call()
    with pytest.raises(ConfigError, match="drain"):
        splice_engine.Engine(threads=1).close(drain=-1)


def test_unavailable_kernel_feature_is_the_base_error() -> None:
    if Path("/sys/module/tls").exists():
        pytest.skip("this kernel has kTLS: `ktls = \"on\"` starts")
    with pytest.raises(Error, match=r"kernel TLS is not available: .*`tls` module") as e:
        splice_engine.Engine(threads=1, ktls="on")
    assert type(e.value) is Error
