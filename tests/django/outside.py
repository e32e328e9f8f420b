"""A task outside every installed app: a job naming it must not make a process import this module."""

from __future__ import annotations

try:
    from django.tasks import task
except ImportError:  # Django 5.2
    from django_tasks import task


@task
def hidden() -> str:
    return "ran"
