"""Django's tasks framework on pgjobs: an app for INSTALLED_APPS and the task backend ``PgjobsBackend``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import PgjobsBackend

__all__ = ["PgjobsBackend"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that listing the app in INSTALLED_APPS imports nothing of Django's
    # tasks framework before the settings are read.
    if name == "PgjobsBackend":
        from ._backend import PgjobsBackend

        return PgjobsBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
