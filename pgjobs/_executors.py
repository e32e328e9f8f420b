"""Where sync tasks run: a thread of their own, or a pool of child processes that can be killed.

A thread cannot be killed; the most Python allows is an exception raised in it at its next bytecode
boundary (``run_in_thread``). A child process can: ``ProcessPool`` runs each job in one of its
children, reused across jobs, and stops a run by stopping its child (SIGTERM, then SIGKILL after a
grace), replacing it afterwards. A child that crashes fails its run alone.

Parent and child speak newline-delimited JSON over two pipes; a third pipe, which only the parent
holds open, tells the child that the parent died (besides PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import datetime as dt
import faulthandler
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import IO, Any, TypeVar

from . import _tracing, tasks
from .errors import ConfigurationError, JobCancelled, PgjobsError
from .job import Job, JobStatus, json_text

# Touch a run's heartbeat with progress and meta; false when the run is no longer the worker's.
Touch = Callable[[float | None, Mapping[str, Any] | None], Awaitable[bool]]

_T = TypeVar("_T")
_MB = 1024 * 1024
# How often the parent reads the resident memory of children running a job.
MEMORY_CHECK_INTERVAL = 0.1


class TaskFailed(Exception):
    """A run failed in an executor: ``error`` is the text to record; ``killed`` names why the
    executor killed it itself ("memory"), if it did."""

    def __init__(self, error: str, *, retry: bool = True, killed: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.retry = retry
        self.killed = killed


def stop_exception(message: str) -> type[JobCancelled]:
    """A JobCancelled subclass that carries message: an exception raised asynchronously in a thread
    is given as a class, which Python instantiates without arguments."""

    def init(self: JobCancelled) -> None:
        JobCancelled.__init__(self, message)

    return type("JobCancelled", (JobCancelled,), {"__init__": init, "__module__": JobCancelled.__module__})


# ------------------------------------------------------------------------------------------------
# Threads
# ------------------------------------------------------------------------------------------------
def _raise_in_thread(ident: int, exc: type[BaseException]) -> bool:
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    n = set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc))
    if n > 1:  # never expected: undo rather than hit threads that are not ours
        set_async_exc(ctypes.c_ulong(ident), None)
    return bool(n == 1)


async def run_in_thread(call: Callable[[], Any], name: str, why: Callable[[], str], grace: float) -> Any:
    """Run a sync call in a daemon thread of its own and await its result. Cancelling the await
    raises JobCancelled(why()) in the thread at its next bytecode boundary and waits up to grace
    seconds for the thread to end; one stuck in a C call (time.sleep, a socket read) is abandoned
    and finishes in the background, unheard."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()
    lock = threading.Lock()
    running = True  # under lock: once false, the thread's ident may belong to another thread

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def target() -> None:
        nonlocal running
        try:
            try:
                ok, value = True, context.run(call)
            except BaseException as exc:
                ok, value = False, exc
            with lock:
                running = False
        except BaseException as exc:  # a stop raised just as the call returned lands here
            ok, value = False, exc
        with contextlib.suppress(RuntimeError):  # the worker's loop may be gone by now
            loop.call_soon_threadsafe(settle, ok, value)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_unheard)
        with lock:
            raised = running and thread.ident is not None and _raise_in_thread(thread.ident, stop_exception(why()))
        if raised:  # give the thread a moment to end, so that its retry does not overlap it
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({future}, timeout=grace)
        raise


def _unheard(future: asyncio.Future[Any]) -> None:
    """What a stopped run's thread ends with is nobody's concern (no "never retrieved" log)."""
    if not future.cancelled():
        future.exception()


# ------------------------------------------------------------------------------------------------
# Processes: the parent's side
# ------------------------------------------------------------------------------------------------
class _Gone(Exception):
    """The child closed its end of the pipe: it exited or was killed."""


@dataclass(eq=False)
class _Child:
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    read_transport: asyncio.BaseTransport
    writer: asyncio.WriteTransport
    life: int  # write end of the pipe whose closing tells the child its parent is gone
    jobs: int = 0
    killed: str | None = None  # why the pool killed it, when it did so on its own
    stopping: bool = False  # the pool is stopping it (its run was stopped, or the pool closes)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: Mapping[str, Any]) -> None:
        self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        line = await self.reader.readline()
        if not line.endswith(b"\n"):
            raise _Gone
        message: dict[str, Any] = json.loads(line)
        return message

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def close_pipes(self) -> None:
        self.writer.close()
        self.read_transport.close()
        with contextlib.suppress(OSError):
            os.close(self.life)
        self.life = -1


def describe_exit(status: int) -> str:
    """A child's exit status in words: ``killed by signal 11 (SIGSEGV)``, ``exited with status 3``."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = "unknown signal"
    hint = ", perhaps the kernel's out-of-memory killer" if -status == signal.SIGKILL else ""
    return f"killed by signal {-status} ({name}{hint})"


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _job_fields(job: Job) -> dict[str, Any]:
    """The Job's stored fields as JSON values (times as ISO 8601 text)."""
    out: dict[str, Any] = {}
    for f in fields(job):
        if f.name.startswith("_"):
            continue
        value = getattr(job, f.name)
        out[f.name] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out


# The child's entry point: a fresh interpreter (no fork of a threaded worker).
_CHILD_MAIN = "from pgjobs._executors import child_main; child_main()"


class ProcessPool:
    """Child processes that run sync tasks, one job at a time each, started on demand and reused
    (as many as there are runs at once: the worker's concurrency bounds them).

    :param modules: the task modules each child imports when it starts.
    :param max_jobs_per_child: replace a child after that many jobs (None: never).
    :param max_memory_mb: replace a child after a job that left it above that resident memory, and
        kill one that goes above it while it runs a job (None: no limit).
    :param kill_grace: seconds between SIGTERM and SIGKILL when a run is stopped.
    :param on_restart: called with why each child was replaced: killed, crashed, memory, max_jobs.
    """

    def __init__(
        self,
        modules: Sequence[str],
        *,
        max_jobs_per_child: int | None = None,
        max_memory_mb: float | None = None,
        kill_grace: float = 2.0,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.modules = list(modules)
        self.max_jobs_per_child = max_jobs_per_child
        self.max_memory_mb = max_memory_mb
        self.kill_grace = kill_grace
        self.on_restart = on_restart
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._ended: set[asyncio.Task[Any]] = set()  # children being stopped or retired
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the children alive now."""
        return [c.pid for c in (*self._idle, *self._busy)]

    async def start(self) -> None:
        """Start one child, which proves that the modules import; it stays for the first job."""
        self._idle.append(await self._spawn())
        if self.max_memory_mb is not None:
            self._watch = asyncio.create_task(self._watch_memory(), name="pgjobs-memory-watch")

    async def close(self) -> None:
        """Let idle children exit, stop any still running, and wait until every one is gone."""
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        for child in self._idle:
            self._retire(child, None)
        self._idle.clear()
        for child in list(self._busy):
            self._background(self._stop(child))
        while self._ended:
            await asyncio.gather(*list(self._ended), return_exceptions=True)

    async def run(self, job: Job, task: str, pass_job: bool, touch: Touch, on_stop: Callable[[str], None]) -> Any:
        """Run the job's task in a child and return its result (decoded JSON). Raises TaskFailed
        when the task raised or its child died. Cancelled, it stops the child (on_stop hears how)
        and waits until it is gone before it re-raises."""
        child = await self._take()
        self._busy.add(child)
        try:
            request = {"task": task, "args": job.args, "job": _job_fields(job) if pass_job else None}
            child.send({**request, "trace": context} if (context := _tracing.carrier()) else request)
            while "update" in (reply := await child.receive()):
                child.send(await self._touch(touch, reply["update"]))
        except asyncio.CancelledError:
            # Waited for (the retry must not overlap it), and finished even if this is cancelled again.
            on_stop(await asyncio.shield(self._background(self._stop(child))))
            raise
        except (_Gone, ValueError):  # ValueError: a line cut short by the child's death
            status = await child.proc.wait()
            self._drop(child)
            if child.stopping:  # close() stopped it under a run that was not cancelled
                raise TaskFailed("the process running the task was stopped: the worker is closing") from None
            if child.killed is not None:
                self._restarted("memory")
                raise TaskFailed(f"the process running the task was killed: {child.killed}", killed="memory") from None
            self._restarted("crashed")
            raise TaskFailed(f"the process running the task died: {describe_exit(status)}") from None
        finally:
            self._busy.discard(child)
        child.jobs += 1
        self._give_back(child, reply.get("rss"))
        if "error" in reply:
            raise TaskFailed(reply["error"], retry=bool(reply.get("retry", True)))
        return reply.get("result")

    @staticmethod
    async def _touch(touch: Touch, update: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"touched": await touch(update.get("progress"), update.get("meta"))}
        except Exception as exc:  # the child raises it in the task
            return {"failed": f"{type(exc).__name__}: {exc}"}

    # -- children ---------------------------------------------------------------------------------
    async def _take(self) -> _Child:
        while self._idle:
            child = self._idle.pop()
            if child.proc.returncode is None:
                return child
            self._drop(child)  # died while idle (an OOM kill, someone's kill)
            self._restarted("crashed")
        return await self._spawn()

    async def _spawn(self) -> _Child:
        if self._closed:
            raise RuntimeError("the process pool is closed")
        loop = asyncio.get_running_loop()
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        life_r, life_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD_MAIN, str(request_r), str(reply_w), str(life_r), str(os.getpid()),
                stdin=subprocess.DEVNULL, pass_fds=(request_r, reply_w, life_r),
                # Its own session: a terminal's Ctrl-C or Ctrl-Z reaches the worker, which decides.
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            for fd in (request_w, reply_r, life_w):
                os.close(fd)
            raise
        finally:
            for fd in (request_r, reply_w, life_r):
                os.close(fd)
        reader = asyncio.StreamReader(limit=2**31 - 1)  # a line is a whole result
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(reply_r, "rb", buffering=0)
        )
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(request_w, "wb", buffering=0))
        child = _Child(proc, reader, read_transport, writer, life_w)
        child.send({"path": sys.path, "modules": self.modules, "rss": self.max_memory_mb is not None})
        try:
            hello = await child.receive()
        except (_Gone, ValueError):
            hello = {"error": f"a child process for sync tasks {describe_exit(await proc.wait())} as it started"}
        except BaseException:
            child.signal(signal.SIGKILL)
            await proc.wait()
            child.close_pipes()
            raise
        if "error" in hello:
            child.signal(signal.SIGKILL)
            await proc.wait()
            child.close_pipes()
            raise ConfigurationError(hello["error"])
        return child

    def _give_back(self, child: _Child, rss: int | None) -> None:
        if self.max_jobs_per_child is not None and child.jobs >= self.max_jobs_per_child:
            self._retire(child, "max_jobs")
        elif self.max_memory_mb is not None and rss is not None and rss > self.max_memory_mb * _MB:
            self._retire(child, "memory")
        elif self._closed:
            self._retire(child, None)
        else:
            self._idle.append(child)

    def _retire(self, child: _Child, reason: str | None) -> None:
        """Let an idle child go: it exits when its request pipe closes."""
        self._drop(child)
        if reason is not None:
            self._restarted(reason)
        self._background(self._reap(child))

    def _background(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """A task that ends a child; close() waits for every one."""
        task = asyncio.create_task(coro)
        self._ended.add(task)
        task.add_done_callback(self._ended.discard)
        return task

    async def _reap(self, child: _Child) -> None:
        try:
            await asyncio.wait_for(child.proc.wait(), self.kill_grace)
        except TimeoutError:
            child.signal(signal.SIGKILL)
            await child.proc.wait()

    async def _stop(self, child: _Child) -> str:
        """Stop a child in the middle of a job: SIGTERM, SIGKILL after the grace. Says how it ended."""
        child.stopping = True
        self._restarted("killed")
        child.signal(signal.SIGTERM)
        try:
            status = await asyncio.wait_for(child.proc.wait(), self.kill_grace)
        except TimeoutError:
            child.signal(signal.SIGKILL)
            await child.proc.wait()
            return f"its process ignored SIGTERM for {self.kill_grace:g} s and was killed with SIGKILL"
        finally:
            self._drop(child)  # not before: its closed pipes would make the child SIGKILL itself
        if status in (0, -signal.SIGTERM):
            return "its process was stopped with SIGTERM"
        return f"its process was sent SIGTERM and {describe_exit(status)}"

    @staticmethod
    def _drop(child: _Child) -> None:
        """Close the pipes of a child that will not run another job (an idle one exits then)."""
        if child.life >= 0:
            child.close_pipes()

    def _restarted(self, reason: str) -> None:
        if self.on_restart is not None:
            self.on_restart(reason)

    async def _watch_memory(self) -> None:
        """Kill a child that goes past the memory limit while it runs a job (at once: a grace would
        let it take more)."""
        assert self.max_memory_mb is not None
        limit = self.max_memory_mb * _MB
        while True:
            await asyncio.sleep(MEMORY_CHECK_INTERVAL)
            for child in list(self._busy):
                rss = rss_bytes(child.pid)
                if rss is not None and rss > limit and child.killed is None:
                    child.killed = (
                        f"it exceeded the memory limit of {self.max_memory_mb:g} MB (it held {rss / _MB:.0f} MB)"
                    )
                    child.signal(signal.SIGKILL)


# ------------------------------------------------------------------------------------------------
# Processes: the child's side
# ------------------------------------------------------------------------------------------------
_TIMES = frozenset(f.name for f in fields(Job) if f.name.endswith("_at"))
_stopping = False  # set by SIGTERM: the worker stops this child's run
_report_rss = False  # whether replies carry this process's memory (the worker has a limit)


def _on_sigterm(signum: int, frame: Any) -> None:
    global _stopping
    _stopping = True
    raise JobCancelled("the worker stopped this run: its process got SIGTERM")


class _Link:
    """The child's end of the pipes, and job.update() over them."""

    def __init__(self, requests: IO[bytes], replies: IO[bytes]) -> None:
        self.requests, self.replies = requests, replies
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def receive(self) -> Any:
        line = self.requests.readline()
        return json.loads(line) if line else None

    def send(self, data: bytes) -> None:
        self.replies.write(data + b"\n")
        self.replies.flush()

    def bind(self, job: Job) -> None:
        # Job.update() hands its touch to an event loop: a small one in a thread of this child.
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="pgjobs-updates", daemon=True).start()
        job._bind(self.loop, self.touch)

    async def touch(self, progress: float | None, meta: Mapping[str, Any] | None) -> bool:
        update = {"progress": progress, "meta": None if meta is None else json.loads(json_text(dict(meta), "meta"))}
        with self.lock:
            self.send(_encode({"update": update}))
            reply = self.receive()
        if reply is None:
            raise PgjobsError("job.update(): the worker is gone")
        if "failed" in reply:
            raise PgjobsError(f"job.update() failed in the worker: {reply['failed']}")
        return bool(reply["touched"])


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode()


def _own_rss() -> int | None:
    if not _report_rss:
        return None
    rss = rss_bytes(os.getpid())
    if rss is not None:
        return rss
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _job_from(values: dict[str, Any]) -> Job:
    for name in _TIMES:
        if isinstance(values.get(name), str):
            values[name] = dt.datetime.fromisoformat(values[name])
    job = Job(**values)
    job.status = JobStatus(job.status)
    return job


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _run(link: _Link, request: dict[str, Any]) -> bytes:
    """Run one job's task; the reply as JSON."""
    name = request["task"]
    task = tasks.registry.get(name)
    if task is None:
        error = f"unknown task {name!r}: no task of that name is registered by the modules the child imported"
        return _encode({"error": error, "retry": False})
    try:
        leading: tuple[Job, ...] = ()
        if request["job"] is not None:
            job = _job_from(request["job"])
            link.bind(job)
            leading = (job,)
        args = request["args"]
        _tracing.adopt(request.get("trace"))
        result = task.func(*leading, *args) if isinstance(args, list) else task.func(*leading, **args)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
    except BaseException as exc:  # a task's SystemExit fails its run, not the child
        if _stopping:
            raise
        error = "".join(traceback.format_exception(exc)).replace("\x00", "\\x00")  # text cannot hold NUL
        return _encode({"error": error, "rss": _own_rss()})
    try:
        return _encode({"result": result, "rss": _own_rss()})
    except (TypeError, ValueError) as exc:
        return _encode({"error": f"the result of task {name!r} cannot be stored as JSON: {exc}", "retry": False})


def _die_with_parent(parent: int, life: int) -> None:
    """Make sure this process dies with the worker: PR_SET_PDEATHSIG on Linux, and a thread that
    waits for the end of a pipe only the worker holds open (any system)."""
    if sys.platform == "linux" and os.environ.get("PGJOBS_CHILD_PDEATHSIG") != "0":  # "0": tests of the pipe
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the worker died before prctl took hold
        os._exit(1)

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(life, 1):
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="pgjobs-parent-watch", daemon=True).start()


def _exit(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if _stopping:  # end as SIGTERM would have ended it, now that finally blocks have run
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    os._exit(status)


def child_main() -> None:
    """A child of the process pool: import the task modules, then run jobs until the pipe closes."""
    requests_fd, replies_fd, life_fd, parent = (int(a) for a in sys.argv[1:5])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides what a Ctrl-C means
    _die_with_parent(parent, life_fd)
    faulthandler.enable()  # a segfault prints the task's Python stack to the worker's stderr
    link = _Link(os.fdopen(requests_fd, "rb"), os.fdopen(replies_fd, "wb"))
    hello = link.receive()
    if hello is None:
        _exit(0)
    global _report_rss
    _report_rss = bool(hello.get("rss"))
    sys.path[:] = hello["path"]
    try:
        tasks.load(hello["modules"])
    except BaseException as exc:
        link.send(_encode({"error": str(exc) if isinstance(exc, PgjobsError) else repr(exc)}))
        _exit(1)
    link.send(_encode({"ready": os.getpid()}))
    signal.signal(signal.SIGTERM, _on_sigterm)
    status = 0
    try:
        while (request := link.receive()) is not None:
            reply = _run(link, request)
            if _stopping:
                break
            link.send(reply)
    except BaseException:
        if not _stopping:
            traceback.print_exc()
            status = 1
    _exit(status)
