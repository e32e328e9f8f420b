"""Starting real `pgjobs` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]


class Process:
    """`python -m pgjobs ARGS` from the repository root (so tests.acceptance.tasks imports),
    its output kept in a temporary file so that a chatty process never blocks on a pipe."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        """``prefix``: a command that runs it (``ip netns exec HOST``)."""
        self._out: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by close()
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "pgjobs", *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._out.flush()
        self._out.seek(0)
        return self._out.read()

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._out.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m pgjobs ARGS` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "pgjobs", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
