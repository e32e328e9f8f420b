"""The browser dashboard (extra ``pgjobs[dashboard]``): ``pgjobs dashboard``, or ``app()`` to mount."""

from .web import app

__all__ = ["app"]
