"""``pgjobs dashboard``: the app served by uvicorn, on a loopback address unless a token guards it.

Behind a TLS proxy, ``PGJOBS_DASHBOARD_FORWARDED_ALLOW_IPS`` names the proxy's addresses (comma
separated, networks allowed, ``*`` any): requests from them are taken to have come the way their
``X-Forwarded-Proto`` and ``X-Forwarded-For`` say, so the cookies of an https request are
``Secure``. Unset, those headers are ignored: anyone could send them.
"""

from __future__ import annotations

import ipaddress
import os
import sys

import uvicorn

from .. import _database, migrations
from ..errors import ConfigurationError
from .web import LOOPBACK_HOSTS, app

FORWARDED_ALLOW_IPS = "PGJOBS_DASHBOARD_FORWARDED_ALLOW_IPS"


def is_loopback(host: str) -> bool:
    """Whether host is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def serve(
    dsn: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    read_only: bool = False,
    token: str | None = None,
    forwarded_allow_ips: str | None = None,
) -> int:
    """Serve the dashboard until interrupted. Refuses (ConfigurationError) a host other than a
    loopback address without a token: anyone who reaches it could steer the queues.

    ``forwarded_allow_ips`` (default ``$PGJOBS_DASHBOARD_FORWARDED_ALLOW_IPS``): the trusted proxies
    whose ``X-Forwarded-Proto`` and ``X-Forwarded-For`` count; None: nobody's."""
    loopback = is_loopback(host)
    if not loopback and not token:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without a token: anyone who reaches it could retry, cancel "
            "and delete jobs. Give --token (or PGJOBS_DASHBOARD_TOKEN), or bind 127.0.0.1"
        )
    target = migrations.prepare(dsn)
    dashboard = app(
        target, read_only=read_only, token=token or None, insecure=not token,
        allowed_hosts=["*"] if token else [*LOOPBACK_HOSTS, host],
    )  # fmt: skip
    proxies = forwarded_allow_ips or os.environ.get(FORWARDED_ALLOW_IPS) or None
    shown = f"[{host}]" if ":" in host else host
    mode = ", read-only" if read_only else ""
    print(
        f"pgjobs dashboard on http://{shown}:{port}/ (database {_database.redact(target)}{mode}); Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        dashboard, host=host, port=port, log_level="warning", server_header=False,
        proxy_headers=proxies is not None, forwarded_allow_ips=proxies,
    )  # fmt: skip
    return 0
