"""Management commands of the pgjobs Django app."""
