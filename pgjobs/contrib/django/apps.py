"""The Django app: gives a project the ``pgjobs_worker`` management command."""

from __future__ import annotations

from django.apps import AppConfig


class PgjobsConfig(AppConfig):
    name = "pgjobs.contrib.django"
    label = "pgjobs"
    verbose_name = "pgjobs"
