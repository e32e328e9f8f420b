"""Tests of the Django tasks backend (pgjobs.contrib.django), run in virtualenvs that have Django."""
