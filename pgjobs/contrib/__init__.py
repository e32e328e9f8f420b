"""Integrations of pgjobs with frameworks, each behind an optional extra."""
