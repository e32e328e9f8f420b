"""A small Django project for the tests: settings, tasks, an async view."""
