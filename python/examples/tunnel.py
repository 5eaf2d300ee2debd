"""A tunnel, all in one process: a relay, a tunnel opened through its API, a destination agent
in front of a local service and a source agent; one request goes through.

    python tunnel.py CERT KEY CA    (CERT/KEY: the relay's, for localhost; CA: signed them)
"""

import socket
import sys
import threading

import splice_engine

cert, key, ca = sys.argv[1:4]

# A local service: answers one line upper-cased.
service = socket.create_server(("127.0.0.1", 0))


def serve() -> None:
    conn, _ = service.accept()
    with conn:
        conn.sendall(conn.recv(1024).upper())


threading.Thread(target=serve, daemon=True).start()
target = f"127.0.0.1:{service.getsockname()[1]}"

relay_toml = f"""
[[relay]]
name = "r"
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
api = "127.0.0.1:0"
state = ":memory:"
"""
with splice_engine.Engine(relay_toml) as relay:
    host, port = relay.relay_addr("r") or ("", 0)
    api = relay.relay_api_url("r") or ""
    tunnel = splice_engine.open_tunnel(api, ["web"], thing="example")
    with splice_engine.Destination(
        f"{host}:{port}", ca=ca, sni="localhost",
        token=tunnel.destination_token or "", services={"web": target},
    ) as dst, splice_engine.Source(
        f"{host}:{port}", ca=ca, sni="localhost",
        token=tunnel.source_token or "", services={"web": "127.0.0.1:0"},
    ) as src:
        dst.wait_connected()
        src.wait_connected()
        with socket.create_connection(src.address("web"), timeout=10) as s:
            s.sendall(b"hello through the tunnel\n")
            print(s.recv(1024).decode(), end="")
    splice_engine.close_tunnel(api, tunnel.id)
