"""Put TLS in front of a local plain TCP service, and show its counters.

    python tls_front.py LISTEN BACKEND CERT KEY [SECONDS]

e.g. ``python tls_front.py 127.0.0.1:8443 127.0.0.1:8080 cert.pem key.pem 60``: TLS clients
of 127.0.0.1:8443 reach the service on 127.0.0.1:8080. Prints the counters every second.
"""

from __future__ import annotations

import logging
import sys
import time

import splice_engine


def main(argv: list[str]) -> int:
    listen, backend, cert, key = argv[1:5]
    seconds = float(argv[5]) if len(argv) > 5 else 10.0
    with splice_engine.Engine(
        threads=2,
        forwarders=[
            {"name": "front", "mode": "server", "listen": listen, "connect": backend,
             "cert": cert, "key": key, "idle_timeout": 300},
        ],
    ) as engine:
        print("listening on", engine.local_addr("front"), flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(1)
            for s in engine.stats():
                print(f"{s['name']}: {s['accepted']} connections, {s['active']} open, "
                      f"{s['bytes_down_to_up']} bytes in, {s['bytes_up_to_down']} out", flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        sys.exit(main(sys.argv))
    except splice_engine.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
