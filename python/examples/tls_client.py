"""Speak TLS to a server from code that only knows plain sockets.

    python tls_client.py HOST PORT [CA_FILE]

Sends an HTTP/1.1 request for / and prints the answer's first line. The server's certificate
is verified against CA_FILE (the system's roots without it) for the name HOST.
"""

from __future__ import annotations

import sys

import splice_engine


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    ca = argv[3] if len(argv) > 3 else None
    with splice_engine.Engine(threads=1) as engine:
        with engine.connect(host, port, ca=ca) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            sock.settimeout(10)
            answer = b""
            while b"\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        if not answer:
            stats = engine.stats()[0]
            print(f"no answer (tls errors: {stats['errors_tls']}, see the log)", file=sys.stderr)
            return 1
        print(answer.split(b"\n")[0].strip().decode(errors="replace"))
    return 0


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv))
