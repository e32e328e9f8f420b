"""Settings of the test project: the database is PGJOBS_DJANGO_DB on the server of PGJOBS_TEST_DSN."""

from __future__ import annotations

import importlib.util
import os

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_SERVER = os.environ.get("PGJOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
_NAME = os.environ.get("PGJOBS_DJANGO_DB", "pgjobs_django")
_PARTS = conninfo_to_dict(_SERVER)

SECRET_KEY = "tests only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "tests.django.project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    # Django 5.2 takes the backport; Django 6 has django.tasks.
    *(["django_tasks"] if importlib.util.find_spec("django.tasks") is None else []),
    "pgjobs.contrib.django",
    "tests.django.project",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _NAME,
        "HOST": _PARTS.get("host", ""),
        "PORT": _PARTS.get("port", ""),
        "USER": _PARTS.get("user", ""),
        "PASSWORD": _PARTS.get("password", ""),
    }
}

TASKS = {
    "default": {
        "BACKEND": "pgjobs.contrib.django.PgjobsBackend",
        # "manual": no worker runs it; the tests move its jobs through pgjobs' SQL API by hand.
        "QUEUES": ["default", "manual", "priorities", "processes"],
    },
    # Retries, as pgjobs options for every job of this backend.
    "retrying": {
        "BACKEND": "pgjobs.contrib.django.PgjobsBackend",
        "QUEUES": ["default", "manual"],
        "OPTIONS": {"JOB_OPTIONS": {"retries": 1, "retry_delay": 0}},
    },
    # The same database through a DSN: pgjobs' own pool, outside Django's transactions.
    "separate": {
        "BACKEND": "pgjobs.contrib.django.PgjobsBackend",
        "QUEUES": ["manual"],
        "OPTIONS": {"DSN": make_conninfo(_SERVER, dbname=_NAME)},
    },
}
