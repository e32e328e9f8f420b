pytest_plugins = ["tests.fixtures", "tests.cluster", "tests.partition", "tests.pgbouncer"]
