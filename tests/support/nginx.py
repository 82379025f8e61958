"""A real nginx (Debian's nginx-light) in the foreground under a private prefix, for the tests that
supervise one: its argv and the loopback port it serves "ok" on."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.harness import require
from tests.support.smtp import free_port

NGINX = "/usr/sbin/nginx"


def nginx_command(prefix: Path, workers: int) -> tuple[list[str], int]:
    """Write an nginx.conf under ``prefix`` (pid, logs and temp paths all inside it) for ``workers``
    worker processes and return ``(argv, port)``; skip the test if nginx is not installed."""
    require(
        os.path.exists(NGINX),
        "nginx is not installed (Debian's nginx-light, in scripts/test's APT_PACKAGES)",
        "HASUPD_TEST_NO_NGINX",
    )
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    return [NGINX, "-g", "daemon off;", "-p", str(prefix), "-c", str(conf)], port
