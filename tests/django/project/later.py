"""A task outside any tasks module: the worker finds it by its module path when a job names it."""

from __future__ import annotations

try:
    from django.tasks import task
except ImportError:  # Django 5.2
    from django_tasks import task


@task
def shout(text: str) -> str:
    return text.upper()
