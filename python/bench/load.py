"""``engine.connect()`` as a load generator (a benchmark, not a test).

``cargo xtask bench`` runs it as the path ``py-connect``, beside the CLI's client mode
(``splice-uring``), against the same server end and sink::

    python python/bench/load.py --ca CA [--sni NAME] [--driver uring] bulk --target HOST:PORT \\
        --duration SECS [--streams 1]

One ``engine.connect()`` socket writes the sink's pattern (``benches/src/pattern.rs``) for
SECS, half-closes, and reads the sink's 16-byte report (bytes received, first bad offset + 1):
only confirmed bytes count. Prints the JSON ``splice-load bulk`` prints, plus
``client_cpu_s``: the CPU seconds the engine's threads used (the process's, less this
thread's, which only writes the plain socket as a program would).
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import struct
import sys
import time

import splice_engine

PERIOD = 1_048_573
MAX_CHUNK = 256 * 1024
CHUNK = 256 * 1024


def pattern() -> bytes:
    """The sink's pattern, with a tail so that any slice up to MAX_CHUNK is contiguous."""
    mask = (1 << 64) - 1
    x = 0x9E37_79B9_7F4A_7C15
    out = bytearray()
    while len(out) < PERIOD:
        x ^= x >> 12
        x = (x ^ (x << 25)) & mask
        x ^= x >> 27
        out += ((x * 0x2545_F491_4F6C_DD1D) & mask).to_bytes(8, "little")
    del out[PERIOD:]
    return bytes(out + out[:MAX_CHUNK])


def cpu(who: int) -> float:
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


def engine_cpu() -> float:
    """CPU seconds of every thread but this one: the engine's."""
    return cpu(resource.RUSAGE_SELF) - cpu(resource.RUSAGE_THREAD)


def bulk(sock: socket.socket, seconds: float) -> dict[str, object]:
    block = memoryview(pattern())
    sent = 0
    t0, c0 = time.perf_counter(), engine_cpu()
    until = t0 + seconds
    while time.perf_counter() < until:
        start = sent % PERIOD
        sock.sendall(block[start : start + CHUNK])
        sent += CHUNK
    sock.shutdown(socket.SHUT_WR)
    report = b""
    while len(report) < 16:
        b = sock.recv(16 - len(report))
        if not b:
            raise OSError(f"no report from the sink after {sent} bytes")
        report += b
    secs = time.perf_counter() - t0
    received, bad = struct.unpack("<QQ", report)
    if bad or received != sent:
        raise OSError(f"the sink received {received} of {sent} bytes (first bad + 1: {bad})")
    return {
        "streams": 1,
        "bytes": sent,
        "secs": secs,
        "gbit_per_s": sent * 8 / secs / 1e9,
        "client_cpu_s": engine_cpu() - c0,
        "errors": {"count": 0, "samples": []},
    }


def main() -> None:
    p = argparse.ArgumentParser(description="engine.connect() as a load generator")
    p.add_argument("--ca", required=True)
    p.add_argument("--sni", default="localhost")
    p.add_argument("--driver", default="auto")
    p.add_argument("mode", choices=["bulk"])
    p.add_argument("--target", required=True)
    p.add_argument("--duration", type=float, default=1.0)
    p.add_argument("--streams", type=int, choices=[1], default=1)
    args = p.parse_args()
    host, port = args.target.rsplit(":", 1)
    # One shard thread on the asked driver, as the CLI client it is compared with.
    with splice_engine.Engine(threads=1, driver=args.driver, access_log=False) as engine:
        try:
            with engine.connect(host, int(port), ca=args.ca, sni=args.sni) as sock:
                result = bulk(sock, args.duration)
        except OSError as e:
            result = {"errors": {"count": 1, "samples": [str(e)]}}
    json.dump(result, sys.stdout)
    print()
    sys.exit(0 if result["errors"] == {"count": 0, "samples": []} else 1)


if __name__ == "__main__":
    main()
