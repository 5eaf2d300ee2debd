"""Several Python threads on one engine; and a clean shutdown (no thread or fd left)."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List

import pytest

import splice_engine
from conftest import DRIVERS, SOON, Backend, Pki, hashed_roundtrip


def threads_and_fds() -> "tuple[int, List[str]]":
    return len(os.listdir("/proc/self/task")), sorted(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("driver", DRIVERS)
def test_threads_share_an_engine(driver: str, pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=2, driver=driver) as engine:
        engine.add_forwarder(
            name="s", mode="server", listen="127.0.0.1:0",
            connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
        )
        addr = engine.local_addr("s")
        assert addr is not None

        def work(i: int) -> None:
            for j in range(5):
                # Half the calls share a connector, the others add their own.
                sni = "localhost" if i % 2 else None
                with engine.connect("localhost", addr[1], ca=pki.ca, sni=sni) as s:
                    hashed_roundtrip(s, 1000 * (i + 1) + j)
                engine.stats()

        with ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(work, i) for i in range(8)]:
                f.result(timeout=SOON * 3)
        stats = {s["name"]: s for s in engine.stats()}
        assert stats["s"]["accepted"] == 40
        assert sum(s["accepted"] for n, s in stats.items() if n != "s") == 40


def test_the_gil_is_released_while_close_drains(pki: Pki, backend: Backend) -> None:
    engine = splice_engine.Engine(threads=1)
    engine.add_forwarder(
        name="s", mode="server", listen="127.0.0.1:0",
        connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
    )
    addr = engine.local_addr("s")
    assert addr is not None
    held = engine.connect("localhost", addr[1], ca=pki.ca)  # open: close() waits its drain
    # Wait until the server side has it (a connection still in the listener's queue when
    # the drain closes the listener is reset, as TCP does).
    deadline = time.monotonic() + SOON
    while [s["handshakes"]["count"] for s in engine.stats() if s["name"] == "s"] != [1]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.01)

    t = threading.Thread(target=count)
    t.start()
    before = ticks
    engine.close(drain=1.0)
    during = ticks - before
    stop.set()
    t.join()
    held.close()
    # A second thread ran while close() waited (with the GIL held it could not have).
    assert during >= 10


def test_clean_shutdown(pki: Pki, backend: Backend) -> None:
    threads0, fds0 = threads_and_fds()
    for driver in DRIVERS:
        with splice_engine.Engine(threads=2, driver=driver) as engine:
            engine.add_forwarder(
                name="s", mode="server", listen="127.0.0.1:0",
                connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
            )
            addr = engine.local_addr("s")
            assert addr is not None
            for _ in range(3):
                with engine.connect("localhost", addr[1], ca=pki.ca) as s:
                    hashed_roundtrip(s, 50_000)
            assert threads_and_fds()[0] > threads0
    # The backend's handler threads end on their own; wait for them, bounded.
    deadline = time.monotonic() + SOON
    while threads_and_fds() != (threads0, fds0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads_and_fds() == (threads0, fds0)


def test_an_engine_dropped_without_close_stops() -> None:
    threads0, _ = threads_and_fds()
    engine = splice_engine.Engine(threads=2)
    assert threads_and_fds()[0] > threads0
    del engine
    import gc

    gc.collect()
    assert threads_and_fds()[0] == threads0


@pytest.mark.parametrize("driver", DRIVERS)
def test_close_drains_open_connections(driver: str, pki: Pki, backend: Backend) -> None:
    import hashlib

    server = splice_engine.Engine(threads=1, driver=driver)
    server.add_forwarder(
        name="s", mode="server", listen="127.0.0.1:0",
        connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
    )
    addr = server.local_addr("s")
    assert addr is not None
    engine = splice_engine.Engine(threads=1, driver=driver)
    sock = engine.connect("localhost", addr[1], ca=pki.ca)
    sock.settimeout(SOON)
    first, rest = os.urandom(100_000), os.urandom(100_000)
    sock.sendall(first)
    closer = threading.Thread(target=engine.close, kwargs={"drain": SOON})
    closer.start()
    time.sleep(0.2)
    # New connections are refused while it drains; the open one carries on to its end.
    with pytest.raises(splice_engine.ConnectionError, match="draining|closed"):
        engine.connect("localhost", addr[1], ca=pki.ca)
    sock.sendall(rest)
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        b = sock.recv(65536)
        if not b:
            break
        answer += b
    sock.close()
    assert answer == hashlib.sha256(first + rest).digest()
    closer.join(SOON)
    assert not closer.is_alive() and engine.closed
    server.close()
