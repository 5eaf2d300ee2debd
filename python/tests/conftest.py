"""Fixtures: a throwaway PKI (openssl), plain TCP backends, and an ``openssl s_server``.

The tests run against the installed package (``cargo xtask py-test`` runs pytest from outside
the source tree), on loopback only, each loop bounded in time and count.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest

DRIVERS = ["uring", "epoll"]
SOON = 10.0  # seconds: "eventually", generous for a loaded machine


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing here: verification against it fails


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other"):
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
            "-subj", f"/CN=splice test {ca}", cwd=d,
        )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d,
    )
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d,
    )
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "other.pem")


class Backend:
    """A plain TCP server on loopback: answers each connection with the SHA-256 of all it
    read (up to end of file), then closes. Counts its connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
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
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(SOON)
            h = hashlib.sha256()
            try:
                while True:
                    b = conn.recv(65536)
                    if not b:
                        break
                    h.update(b)
                conn.sendall(h.digest())
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(SOON)
        self.listener.close()
        for t in self._threads:
            t.join(SOON)


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.close()


def hashed_roundtrip(sock: socket.socket, size: int) -> None:
    """Sends ``size`` random bytes, ends the write side, and checks that the answer is their
    SHA-256 (the backend's), then end of file."""
    payload = os.urandom(size)
    sock.settimeout(SOON)
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    answer = recv_all(sock)
    assert answer == hashlib.sha256(payload).digest(), f"{len(answer)} bytes back"


def recv_all(sock: socket.socket) -> bytes:
    """Reads to end of file (bounded by the socket's timeout)."""
    out = bytearray()
    while True:
        b = sock.recv(65536)
        if not b:
            return bytes(out)
        out += b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SServer:
    port: int
    proc: "subprocess.Popen[bytes]"


@pytest.fixture
def s_server(pki: Pki) -> Iterator[SServer]:
    """``openssl s_server -rev``: answers each line with the line reversed. (The readiness
    probe's plain TCP connection fails its handshake; s_server goes on accepting.)"""
    port = free_port()
    proc = subprocess.Popen(
        [
            "openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(pki.cert),
            "-key", str(pki.key), "-rev", "-quiet",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + SOON
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("openssl s_server did not start")
            time.sleep(0.05)
    yield SServer(port, proc)
    proc.kill()
    proc.wait(SOON)
    assert proc.stderr is not None
    proc.stderr.close()
