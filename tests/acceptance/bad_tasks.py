"""A task module with a bad schedule: importing it must fail with one clear line."""

import pgjobs


@pgjobs.periodic(cron="61 * * * *")
def never() -> None:
    pass
