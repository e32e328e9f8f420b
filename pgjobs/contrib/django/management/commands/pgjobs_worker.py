"""``django-admin pgjobs_worker``: ``pgjobs worker`` on a Django project's tasks."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgjobs import cli, tasks
from pgjobs.contrib.django._backend import PgjobsBackend
from pgjobs.contrib.django._compat import task_backends
from pgjobs.contrib.django._runner import DjangoTasks, discover
from pgjobs.errors import ConfigurationError, PgjobsError, SchemaError


class Command(BaseCommand):
    help = (
        "Run a pgjobs worker on the Django tasks of every installed app's tasks module, of the modules "
        "named, and of any module path a job names; the options are those of `pgjobs worker`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default="default", help="the TASKS alias whose jobs to run (default: default)")
        parser.add_argument(
            "--dsn", help="PostgreSQL DSN (default: the backend's DSN option, else its DATABASES entry)"
        )
        parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        cli.add_worker_arguments(parser, modules="*")

    def handle(self, *args: Any, **options: Any) -> None:
        backend = task_backends[options["backend"]]
        if not isinstance(backend, PgjobsBackend):
            raise CommandError(f"TASKS[{options['backend']!r}] is not a pgjobs.contrib.django.PgjobsBackend")
        cli._setup_logging(options["log_level"])
        ns = argparse.Namespace(**options)
        ns.dsn = options["dsn"] or backend.worker_dsn()
        # The backend's QUEUES unless -q says (Django's default: the one queue "default").
        ns.queue = options["queue"] or sorted(backend.queues) or ["default"]
        try:
            found = discover(tasks.load(ns.modules))
            # With the process executor, tasks found after the start run in threads: the children
            # know only what they imported when they started.
            mapping = DjangoTasks(found, lazy_executor="thread" if ns.executor == "process" else None)
            cli.run_worker(ns, tasks=mapping)
        except (ConfigurationError, SchemaError) as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except PgjobsError as exc:
            raise CommandError(str(exc)) from exc
