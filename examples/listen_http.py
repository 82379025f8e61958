#!/usr/bin/env python3
"""A demo HTTP server that takes its listening socket from hasupd (or systemd) by LISTEN_FDS.

It never binds anything itself: the socket stays open in hasupd while instances crash and restart,
so clients wait in the backlog instead of being refused. Standard library only.

    # services.d/hello.yaml
    command: [/usr/bin/python3, /path/to/listen_http.py]
    instances: 3
    sockets: [{listen: "127.0.0.1:8080"}]
    environment: {INSTANCE: "{instance}"}
"""

from __future__ import annotations

import http.server
import os
import socket
import sys

SD_LISTEN_FDS_START = 3


def listen_fds() -> list[socket.socket]:
    """Return the sockets passed with the sd_listen_fds protocol (empty if none were)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    return [socket.socket(fileno=SD_LISTEN_FDS_START + i) for i in range(count)]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello from instance {os.environ.get('INSTANCE', '?')} pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # already bound and listening: hasupd's


def main() -> int:
    sockets = listen_fds()
    if not sockets:
        print("no LISTEN_FDS: run me under hasupd with `sockets:`", file=sys.stderr)
        return 2
    print(f"serving on {sockets[0].getsockname()} (pid {os.getpid()})", flush=True)
    Server(sockets[0]).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
