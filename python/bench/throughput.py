"""Bulk throughput: ``engine.connect()`` against the CLI's client mode (a benchmark, not a test).

    python python/bench/throughput.py [--binary target/release/splice-engine] [--mib 512] [--runs 5]

Both paths send the same bytes from the same Python loop to the same TLS server (the
``splice-engine`` binary in server mode, in front of ``socat`` writing to /dev/null), one
shard thread each; only the client leg differs: the engine in this process through
``engine.connect()`` (a Unix socketpair), or ``splice-engine client`` in its own process
(loopback TCP). A run ends when the server's end of file arrives, so every byte was
delivered. Prints Gbit/s per run and the median of each path, and beside it the CPU seconds
per GiB of the client side (this process, sender included, plus the CLI client's process:
the part that differs between the paths); loopback only.

``cargo xtask bench --paths splice-uring,py-connect,c-connect`` measures the same in the bench
(``python/bench/load.py``, ``ffi/bench/throughput.c``), with the sink checking every byte.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, List

import splice_engine

CHUNK = memoryview(bytes(1 << 20))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pki(d: Path) -> None:
    def ssl(*a: str) -> None:
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=bench ca")
    ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "key.pem", "-out", "s.csr", "-subj", "/CN=localhost")
    (d / "ext").write_text("subjectAltName=DNS:localhost\n")
    ssl("x509", "-req", "-in", "s.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "cert.pem", "-days", "1", "-extfile", "ext")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (all its threads)."""
    if pid == os.getpid():
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(sock: socket.socket, mib: int, pids: List[int]) -> tuple[float, float]:
    """Sends `mib` MiB, ends the write side, waits for the server's end; returns Gbit/s and
    the CPU seconds per GiB that `pids` spent meanwhile."""
    sock.settimeout(120)
    cpu = sum(cpu_seconds(p) for p in pids)
    start = time.perf_counter()
    for _ in range(mib):
        sock.sendall(CHUNK)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    elapsed = time.perf_counter() - start
    cpu = sum(cpu_seconds(p) for p in pids) - cpu
    return mib * 8 * (1 << 20) / elapsed / 1e9, cpu / (mib / 1024)


def main() -> None:
    p = argparse.ArgumentParser(description="engine.connect() against the CLI's client mode")
    p.add_argument("--binary", default="target/release/splice-engine")
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    procs: List["subprocess.Popen[bytes]"] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pki(d)
        sink, tls, cli = free_port(), free_port(), free_port()

        def start(*cmd: str) -> None:
            procs.append(subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        try:
            start("socat", "-u", f"TCP-LISTEN:{sink},bind=127.0.0.1,reuseaddr,fork",
                  "OPEN:/dev/null")
            start(args.binary, "server", "--listen", f"127.0.0.1:{tls}", "--connect",
                  f"127.0.0.1:{sink}", "--cert", str(d / "cert.pem"), "--key",
                  str(d / "key.pem"), "--threads", "1", "--no-access-log")
            start(args.binary, "client", "--listen", f"127.0.0.1:{cli}", "--connect",
                  f"localhost:{tls}", "--ca", str(d / "ca.pem"), "--threads", "1",
                  "--no-access-log")
            for port in (sink, tls, cli):
                wait_port(port)
            with splice_engine.Engine(threads=1, access_log=False) as engine:
                paths: List[tuple[str, Callable[[], socket.socket]]] = [
                    ("engine.connect()", lambda: engine.connect("localhost", tls, ca=d / "ca.pem")),
                    ("CLI client mode", lambda: socket.create_connection(("127.0.0.1", cli))),
                ]
                # The client side: this process and the CLI client (idle in the other path).
                pids = [os.getpid(), procs[2].pid]
                results: dict[str, List[tuple[float, float]]] = {name: [] for name, _ in paths}
                for run in range(args.runs):
                    for name, open_ in paths:
                        with open_() as sock:
                            results[name].append(send(sock, args.mib, pids))
                        gbit, cpu = results[name][-1]
                        print(f"run {run + 1}: {name}: {gbit:.2f} Gbit/s, {cpu:.2f} CPU s/GiB",
                              flush=True)
                for name, r in results.items():
                    g = [x[0] for x in r]
                    c = [x[1] for x in r]
                    print(f"{name}: median {statistics.median(g):.2f} Gbit/s "
                          f"(min {min(g):.2f}, max {max(g):.2f}), "
                          f"{statistics.median(c):.2f} CPU s/GiB client side "
                          f"({args.mib} MiB x {args.runs})")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
