"""Imported by the process executor's children: sets Django up and registers its apps' tasks with pgjobs."""

from __future__ import annotations

import django
from django.apps import apps

from ... import tasks

if not apps.ready:
    django.setup()

from ._runner import as_pgjobs_task, discover  # after Django is set up

for _name, _task in discover().items():
    tasks.registry.setdefault(_name, as_pgjobs_task(_task))
