"""The asyncio form: several TLS connections at once, each a StreamReader/StreamWriter.

    python asyncio_client.py HOST PORT [CA_FILE]

Opens five connections concurrently, sends a line on each and prints the first line back.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Optional

import splice_engine


async def one(engine: splice_engine.Engine, host: str, port: int, ca: Optional[str], i: int) -> str:
    reader, writer = await engine.open_connection(host, port, ca=ca)
    writer.write(f"hello {i}\n".encode())
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    await writer.wait_closed()
    return line.decode(errors="replace").rstrip()


async def main(host: str, port: int, ca: Optional[str]) -> None:
    with splice_engine.Engine(threads=1) as engine:
        lines = await asyncio.gather(*(one(engine, host, port, ca, i) for i in range(5)))
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
