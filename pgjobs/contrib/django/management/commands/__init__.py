"""The pgjobs_worker command."""
