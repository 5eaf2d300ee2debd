"""The examples run (against ``openssl s_server -rev``, which answers each line reversed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import SOON, Pki, SServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=SOON * 3, check=True
    )
    return out.stdout


def test_tls_client_example(pki: Pki, s_server: SServer) -> None:
    out = run(str(EXAMPLES / "tls_client.py"), "localhost", str(s_server.port), str(pki.ca))
    assert out == "1.1/PTTH / TEG\n"


def test_asyncio_example(pki: Pki, s_server: SServer) -> None:
    out = run(str(EXAMPLES / "asyncio_client.py"), "localhost", str(s_server.port), str(pki.ca))
    assert sorted(out.splitlines()) == sorted(f"{i} olleh" for i in range(5))


def test_tunnel_example(pki: Pki) -> None:
    out = run(str(EXAMPLES / "tunnel.py"), str(pki.cert), str(pki.key), str(pki.ca))
    assert out == "HELLO THROUGH THE TUNNEL\n"
