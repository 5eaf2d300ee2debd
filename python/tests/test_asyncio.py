"""open_connection(): Engine.connect in asyncio's form."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

import splice_engine
from conftest import DRIVERS, SOON, Backend, Pki


async def roundtrip(engine: splice_engine.Engine | None, port: int, pki: Pki, size: int) -> None:
    if engine is None:
        reader, writer = await splice_engine.open_connection("localhost", port, ca=pki.ca)
    else:
        reader, writer = await engine.open_connection("localhost", port, ca=pki.ca)
    payload = os.urandom(size)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), SOON)
    writer.close()
    await writer.wait_closed()
    assert answer == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("driver", DRIVERS)
def test_open_connection_concurrently(driver: str, pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=2, driver=driver) as engine:
        engine.add_forwarder(
            name="front", mode="server", listen="127.0.0.1:0",
            connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
        )
        addr = engine.local_addr("front")
        assert addr is not None

        async def main() -> None:
            sizes = [0, 1, 5000, 400_000] * 4
            await asyncio.wait_for(
                asyncio.gather(*(roundtrip(engine, addr[1], pki, n) for n in sizes)), SOON * 3
            )

        asyncio.run(main())
        [front] = [s for s in engine.stats() if s["name"] == "front"]
        assert front["accepted"] == 16


def test_module_level_open_connection(pki: Pki, backend: Backend) -> None:
    with splice_engine.Engine(threads=1) as front:
        front.add_forwarder(
            name="front", mode="server", listen="127.0.0.1:0",
            connect=f"127.0.0.1:{backend.port}", cert=pki.cert, key=pki.key,
        )
        addr = front.local_addr("front")
        assert addr is not None
        asyncio.run(roundtrip(None, addr[1], pki, 100_000))
