"""Exceptions raised by pgjobs."""

from __future__ import annotations


class PgjobsError(Exception):
    """Base class of every error pgjobs raises on purpose."""


class ConfigurationError(PgjobsError):
    """The database cannot be reached or configured (a wrong DSN, no embedded server)."""


class DatabaseUnavailable(ConfigurationError):
    """The database does not answer now (down, starting, out of connection slots, out of reach);
    a later attempt may succeed."""


class SchemaError(PgjobsError):
    """The pgjobs schema is missing or older than this version of pgjobs expects."""


class ArgumentError(PgjobsError, ValueError):
    """A job's arguments, options or result cannot be stored as given."""


class UnknownTaskError(PgjobsError, LookupError):
    """No task of that name is registered."""


class JobCancelled(PgjobsError):
    """The worker stopped this run (``job.update()`` in a task whose run was stopped; see Job.cancelled)."""
