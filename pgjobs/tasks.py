"""Tasks: plain functions, sync or async, registered by name with the ``@task`` decorator."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from .client import OPTION_NAMES, enqueue, enqueue_async, job
from .errors import PgjobsError, UnknownTaskError

P = ParamSpec("P")
R = TypeVar("R")

# Where sync tasks may run (pgjobs._executors, above this module, holds both).
Executor = Literal["thread", "process"]
EXECUTORS: tuple[Executor, ...] = ("thread", "process")

# Every task registered in this process, by name; a worker runs the ones its modules register.
registry: dict[str, Task[..., Any]] = {}


@dataclass
class Task(Generic[P, R]):
    """A registered task. Calling it runs the function here; ``enqueue`` runs it on a worker."""

    func: Callable[P, R]
    name: str
    pass_job: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    #: Where a sync task runs: "thread" or "process"; None leaves it to the worker's --executor.
    executor: Executor | None = None

    @functools.cached_property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)  # asked for every run: 1 us each time

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def job(self, *args: Any, **kwargs: Any) -> Any:
        """Describe a run of this task for enqueue_many (see pgjobs.job)."""
        return job(self, *args, **kwargs)

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        """Enqueue a run of this task (see pgjobs.enqueue); the decorator's options are defaults."""
        return enqueue(self, *args, **kwargs)

    async def enqueue_async(self, *args: Any, **kwargs: Any) -> Any:
        """The async twin of enqueue()."""
        return await enqueue_async(self, *args, **kwargs)


@overload
def task(func: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *, name: str | None = None, pass_job: bool = False, executor: Executor | None = None, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def task(
    func: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    pass_job: bool = False,
    executor: Executor | None = None,
    **options: Any,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Register a function as a task.

    :param name: the task's name; defaults to ``module.function``.
    :param pass_job: call the function with the running Job as its first argument.
    :param executor: where a sync task runs: ``"thread"`` or ``"process"`` (a child process that
        can be killed); None (the default) leaves it to the worker's ``--executor``.
    :param options: default enqueue options (queue, priority, retries, timeout…).
    """
    unknown = set(options) - OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
    if executor not in (None, *EXECUTORS):
        raise TypeError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")

    def register(f: Callable[P, R]) -> Task[P, R]:
        task_name = name or f"{f.__module__}.{f.__qualname__}"
        existing = registry.get(task_name)
        if existing is not None and existing.func is not f and _origin(existing.func) != _origin(f):
            raise PgjobsError(f"two tasks are named {task_name!r}: give one another name=")
        if executor == "process" and inspect.iscoroutinefunction(f):
            raise TypeError(
                f"task {task_name!r}: executor='process' is for sync functions (async ones run on the loop)"
            )
        t = Task(func=f, name=task_name, pass_job=pass_job, options=dict(options), executor=executor)
        registry[task_name] = t
        return t

    return register(func) if func is not None else register


def _origin(f: Callable[..., Any]) -> tuple[str, str]:
    # A module imported twice (as __main__ and by name) registers the same function twice.
    code = getattr(f, "__code__", None)
    return (getattr(code, "co_filename", ""), getattr(f, "__qualname__", ""))


def load(modules: Iterable[str]) -> list[ModuleType]:
    """Import the given modules (their ``@task`` functions register) and return them."""
    loaded = []
    for module in modules:
        try:
            loaded.append(importlib.import_module(module))
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                raise PgjobsError(f"cannot import task module {module!r}: no module named {exc.name!r}") from None
            raise PgjobsError(f"cannot import task module {module!r}: {exc}") from exc
        except PgjobsError:
            raise
        except Exception as exc:
            raise PgjobsError(f"cannot import task module {module!r}: {type(exc).__name__}: {exc}") from exc
    return loaded


def get(name: str) -> Task[..., Any]:
    """The registered task of that name."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownTaskError(f"no task named {name!r} is registered") from None
