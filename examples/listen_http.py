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
import signal
import socket
import sys
import threading

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
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        # One write: a process killed mid-request has sent either nothing or the whole answer.
        self.wfile.write(head.encode() + body)
        self.close_connection = True

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
    server = Server(sockets[0])

    def graceful(signum: int, frame: object) -> None:
        # Stop accepting (the listening socket stays open in hasupd for the next instance) and let
        # the requests already accepted finish: a polite stop loses no request.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, graceful)
    print(f"serving on {sockets[0].getsockname()} (pid {os.getpid()})", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()  # joins the request threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
