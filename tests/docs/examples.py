"""The code examples of the documentation, found and run as tests (tests/docs/test_examples.py).

Pages: ``README.md`` and every ``docs/**/*.md`` (not ``docs/site/``). Each fenced code block of
these languages is an example, one test each, named ``page:line`` (the line of its opening fence):

- ``python``, ``py``: run by this interpreter (``sys.executable``) in a process of its own, as a
  script (``__name__ == "__main__"``). A block with a top-level ``await`` runs one statement at a
  time, as an asyncio console would: those that await on one event loop, the others outside it.
  Tracebacks name the page and its line numbers.
- ``sql``, ``postgresql``: split into statements as psql splits them and run one by one, in one
  transaction that is rolled back at the end (so ``CREATE ROLE`` leaves nothing on the shared
  server). psql's display commands (``\\x``, ``\\pset``, ``\\timing``...) are ignored; any other
  backslash command fails.
- ``sh``, ``bash``, ``shell``: run by ``bash`` with ``set -euo pipefail``; ``console``: only its
  ``$ `` lines (the rest is output, not checked).

Every example gets a fresh migrated database (``PGJOBS_DSN``; ``DATABASE_URL`` unset), a working
directory of its own (also its ``HOME``), the ``pgjobs`` command of this checkout first on ``PATH``
(then this virtualenv's ``bin``) and 60 seconds; what it leaves running is killed. It
passes when it exits 0 (or every statement succeeds). Blocks of other languages (``js``,
``yaml``...) or none are not run.

**Module files.** A Python block whose first line is a comment naming a relative ``.py`` path
(``# myapp/tasks.py``, or ``# myapp/tasks.py: what it is``) is that file: it is written into the
working directory of every later example of the same page (the latest block naming a path wins), so
they can import it (``from myapp.tasks import send_welcome``, ``pgjobs worker myapp.tasks``). Its
own test imports it.

**Markers** are HTML comments on the lines just before a block (blank lines between are fine),
invisible on the rendered page:

- ``<!-- example: skip (why) -->``: not run; the reason is required and shown by pytest. A skipped
  module file is still written for the page's later examples, only not imported by its own test.
- ``<!-- example: continue -->``: runs after the previous example of the same kind (Python, SQL,
  shell) on the page, in the same process (connection, shell), as one test named after the first.
- ``<!-- example: setup`` ... ``-->``: the lines up to ``-->`` are code in the block's language, run
  just before it and not shown (imports, a ``dsn`` variable, rows an example refers to). A setup
  holds no ``-->`` and, for Markdown's sake, no blank line.

A marker that names no known action, a skip without a reason, a marker that no runnable block
follows, or a ``continue`` with nothing before it to continue is an error: its test fails.

Examples that start ``pgjobs worker``, ``pgjobs demo`` or ``pgjobs dashboard`` processes run in the
suite's ``processes`` xdist group (see tests/conftest.py).

``PGJOBS_DOCS_ROOT`` points the collector at another tree than this checkout (a directory holding
``README.md`` and ``docs/``), to try examples before they land.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0

PYTHON = {"python", "py", "python3"}
SQL = {"sql", "postgresql", "pgsql"}
SHELL = {"sh", "bash", "shell", "console"}
KINDS = {**dict.fromkeys(PYTHON, "python"), **dict.fromkeys(SQL, "sql"), **dict.fromkeys(SHELL, "shell")}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_MODULE = re.compile(r"^#\s*(?P<path>(?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]+\.py)\s*(?::.*)?$")
_MARKER = re.compile(r"^\s*<!--\s*example:\s*(?P<rest>.*)$")
_LEADING = re.compile(r"(?:\s|--[^\n]*)*")  # blanks and -- comments before a statement
_PROCESSES = re.compile(r"\bpgjobs\s+(?:worker|demo|dashboard)\b")
# psql commands that change only how results look: nothing to run.
_PSQL_DISPLAY = {"x", "pset", "timing", "a", "t", "H", "echo", "qecho"}


class ExampleError(AssertionError):
    """An example failed, or its markers are wrong."""


@dataclasses.dataclass
class Chunk:
    """Code that stands at ``line`` (1-based) of its page."""

    line: int
    text: str


@dataclasses.dataclass
class Block:
    page: str
    line: int  # the opening fence
    lang: str
    text: str
    skip: str | None = None
    cont: bool = False
    setup: Chunk | None = None
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def kind(self) -> str | None:
        return KINDS.get(self.lang)

    @property
    def module(self) -> str | None:
        """The path this block is the file of, for a Python block that names one."""
        if self.kind != "python" or not self.text:
            return None
        m = _MODULE.match(self.text.splitlines()[0].strip())
        if not m or m["path"].startswith("/") or ".." in m["path"].split("/"):
            return None
        return m["path"]


@dataclasses.dataclass
class Example:
    """One test: a block, with the blocks that continue it and the page's files before it."""

    page: str
    line: int
    kind: str  # python, module, sql or shell
    chunks: list[Chunk]
    lines: list[int]  # the opening fences of its blocks
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    module: str | None = None
    skip: str | None = None
    error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def starts_processes(self) -> bool:
        return any(_PROCESSES.search(c.text) for c in self.chunks)


# Parsing


def pages(root: Path) -> list[Path]:
    """README.md and docs/**/*.md under root, docs/site/ left out."""
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    docs = root / "docs"
    if docs.is_dir():
        found += sorted(p for p in docs.rglob("*.md") if p.is_file() and "site" not in p.relative_to(docs).parts[:1])
    return found


def _dedent(lines: list[str], indent: str) -> str:
    out = []
    for line in lines:
        out.append(line[len(indent) :] if line.startswith(indent) else line.lstrip(" \t"))
    return "\n".join(out) + ("\n" if out else "")


def _parse_marker(rest: str) -> tuple[str, str]:
    word, _, arg = rest.strip().partition(" ")
    return word.rstrip(":").lower(), arg.strip()


def blocks(page: str, text: str) -> list[Block]:
    """The fenced blocks of a page with their markers; marker errors are kept on the blocks."""
    lines = text.splitlines()
    found: list[Block] = []
    pending: list[tuple[int, str, str, Chunk | None]] = []  # (line, action, argument, setup code)
    orphans: list[Block] = []
    i = 0

    def orphan(line: int, message: str) -> None:
        orphans.append(Block(page, line, "", "", errors=[message]))

    def drop_pending(reason: str) -> None:
        for line, action, _, _ in pending:
            orphan(line, f"{page}:{line}: `example: {action}` marker {reason}")
        pending.clear()

    while i < len(lines):
        line = lines[i]
        m = _MARKER.match(line)
        if m:
            start = i
            rest = m["rest"]
            body: list[str] = []
            if "-->" in rest:
                rest = rest[: rest.index("-->")]
            else:
                i += 1
                while i < len(lines) and "-->" not in lines[i]:
                    body.append(lines[i])
                    i += 1
                if i == len(lines):
                    orphan(start + 1, f"{page}:{start + 1}: `<!-- example:` comment never closed with -->")
                    break
                last = lines[i][: lines[i].index("-->")]
                if last.strip():
                    body.append(last)
            action, arg = _parse_marker(rest)
            setup = None
            if action == "setup":
                code = ([arg] if arg else []) + body
                first = start + 1 if arg else start + 2
                setup = Chunk(first, textwrap.dedent("\n".join(code)) + "\n")
                arg = ""
            elif body and any(b.strip() for b in body):
                arg = " ".join([arg, *(b.strip() for b in body)]).strip()
            pending.append((start + 1, action, arg, setup))
            i += 1
            continue
        if line.lstrip().startswith("<!--"):
            # Another comment: what it holds is no example (a commented-out block stays out).
            while i < len(lines) and "-->" not in lines[i]:
                i += 1
            i += 1
            continue
        f = _FENCE.match(line)
        if f:
            fence, indent = f["fence"], f["indent"]
            lang = (f["info"].strip().split() or [""])[0].lstrip(".{").rstrip("}").lower()
            j = i + 1
            close = re.compile(r"^[ \t]*" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
            while j < len(lines) and not close.match(lines[j]):
                j += 1
            block = Block(page, i + 1, lang, _dedent(lines[i + 1 : j], indent))
            _apply(block, pending)
            pending.clear()
            found.append(block)
            i = j + 1
            continue
        if line.strip():
            drop_pending("is not followed by a code block")
        i += 1
    drop_pending("is not followed by a code block")
    return sorted(found + orphans, key=lambda b: b.line)


def _apply(block: Block, markers: list[tuple[int, str, str, Chunk | None]]) -> None:
    where = f"{block.page}:{block.line}"
    for line, action, arg, setup in markers:
        if block.kind is None:
            block.errors.append(
                f"{block.page}:{line}: `example: {action}` marker on a block that is not run (```{block.lang})"
            )
        elif action == "skip":
            reason = arg.strip()
            if reason.startswith("(") and reason.endswith(")"):
                reason = reason[1:-1].strip()
            if not reason:
                block.errors.append(
                    f"{block.page}:{line}: `example: skip` needs a reason: <!-- example: skip (why) -->"
                )
            block.skip = reason or None
        elif action == "continue":
            if arg:
                block.errors.append(f"{block.page}:{line}: `example: continue` takes nothing, got {arg!r}")
            block.cont = True
        elif action == "setup":
            if block.setup is not None:
                block.errors.append(f"{where}: two `example: setup` markers")
            block.setup = setup
        else:
            block.errors.append(
                f"{block.page}:{line}: unknown marker `example: {action}` (skip (why), continue, setup)"
            )
    if block.module and (block.cont or block.setup):
        block.errors.append(f"{where}: a module file ({block.module}) takes no `continue` or `setup`")


def examples(page: str, text: str) -> list[Example]:
    """The tests of one page: its runnable blocks, continued blocks joined to the one they follow."""
    out: list[Example] = []
    files: dict[str, str] = {}
    last: dict[str, Example] = {}  # kind -> the latest example of that kind
    for block in blocks(page, text):
        if block.errors:
            out.append(
                Example(page, block.line, block.kind or "error", [], [block.line], error="\n".join(block.errors))
            )
            continue
        if block.kind is None:
            continue
        if block.module:
            files[block.module] = block.text
            out.append(
                Example(
                    page,
                    block.line,
                    "module",
                    [Chunk(block.line + 1, block.text)],
                    [block.line],
                    files=dict(files),
                    module=block.module,
                    skip=block.skip,
                )
            )
            continue
        chunks = ([block.setup] if block.setup else []) + [Chunk(block.line + 1, _commands(block))]
        if block.cont and not block.skip:
            previous = last.get(block.kind)
            if previous is None:
                out.append(
                    Example(
                        page,
                        block.line,
                        block.kind,
                        [],
                        [block.line],
                        error=f"{page}:{block.line}: `example: continue` but no {block.kind} block before it",
                    )
                )
                continue
            previous.chunks += chunks
            previous.lines.append(block.line)
            previous.files = dict(files)
            continue
        example = Example(page, block.line, block.kind, chunks, [block.line], files=dict(files), skip=block.skip)
        out.append(example)
        last[block.kind] = example
    return out


def _commands(block: Block) -> str:
    """The code of a block; of a console block, its ``$`` lines (output lines left blank)."""
    if block.lang != "console":
        return block.text
    out, going = [], False
    for line in block.text.splitlines():
        if line.startswith("$ ") or going:
            command = line[2:] if line.startswith("$ ") and not going else line
            out.append(command)
            going = command.rstrip().endswith("\\")
        else:
            out.append("")
    return "\n".join(out) + "\n"


def collect(root: Path = ROOT) -> list[Example]:
    found = []
    for path in pages(root):
        found += examples(path.relative_to(root).as_posix(), path.read_text(encoding="utf-8"))
    return found


def docs_root() -> Path:
    return Path(os.environ.get("PGJOBS_DOCS_ROOT") or ROOT).resolve()


# Running


def _padded(chunks: list[Chunk], first: int = 1) -> str:
    """The chunks' code with each line at its line number of the page (blank lines between)."""
    out: list[str] = []
    for chunk in chunks:
        if chunk.line < len(out) + first:
            raise ExampleError(f"chunks out of order at line {chunk.line}")
        out += [""] * (chunk.line - first - len(out))
        out += chunk.text.splitlines()
    return "\n".join(out) + "\n"


def _environment(dsn: str, workdir: Path) -> dict[str, str]:
    """PGJOBS_DSN, and a ``pgjobs`` command that runs this checkout with this interpreter."""
    bin_dir = workdir / ".bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "pgjobs"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pgjobs "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    for name in ("DATABASE_URL", "PGJOBS_POOLED", "PGJOBS_LISTEN_DSN", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    env["PGJOBS_DSN"] = dsn
    # A home of its own: what an example keeps under ~ (or pgjobs' embedded server) stays in workdir.
    if "PGPASSFILE" not in env and (Path.home() / ".pgpass").is_file():
        env["PGPASSFILE"] = str(Path.home() / ".pgpass")
    (workdir / ".home").mkdir(exist_ok=True)
    env["HOME"] = str(workdir / ".home")
    env["PGJOBS_EMBEDDED_DIR"] = str(workdir / ".home" / "embedded")
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _write_files(example: Example, workdir: Path) -> None:
    for path, text in example.files.items():
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _run_process(argv: list[str], example: Example, env: dict[str, str], workdir: Path, timeout: float) -> None:
    # Output goes to a file, not a pipe: a process the example leaves in the background (a worker
    # started with &) keeps its output open, and is killed with the example's process group.
    log = workdir / ".output"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_bytes().decode(errors="replace")
    if len(text) > 20000:
        text = text[:5000] + "\n[...]\n" + text[-15000:]
    blocks = ", ".join(f"{example.page}:{n}" for n in example.lines)
    if timed_out:
        raise ExampleError(f"{blocks}: still running after {timeout:g} s\n{text}")
    if proc.returncode != 0:
        raise ExampleError(f"{blocks}: exit status {proc.returncode}\n{text}")


_PYTHON_RUNNER = """\
import ast, asyncio, inspect, sys
page, script = sys.argv[1], sys.argv[2]
sys.argv = [page]
flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
with open(script, encoding="utf-8") as f:
    tree = compile(f.read(), page, "exec", flags=flags | ast.PyCF_ONLY_AST, dont_inherit=True)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
code = compile(tree, page, "exec", flags=flags, dont_inherit=True)
if not code.co_flags & inspect.CO_COROUTINE:
    exec(code, namespace)
else:
    # A top-level await: one statement at a time, as an asyncio console runs them, those that
    # await on one event loop and the others outside it (a sync API may run a loop of its own).
    loop = asyncio.new_event_loop()
    for node in tree.body:
        code = compile(ast.Module([node], []), page, "exec", flags=flags, dont_inherit=True)
        if code.co_flags & inspect.CO_COROUTINE:
            loop.run_until_complete(eval(code, namespace))
        else:
            exec(code, namespace)
"""

_IMPORT_RUNNER = """\
import importlib, sys
path = sys.argv[1]
name = path[:-3].replace("/", ".")
if all(part.isidentifier() for part in name.split(".")):
    importlib.import_module(name)
else:
    with open(path, encoding="utf-8") as f:
        compile(f.read(), path, "exec")
"""


def run(example: Example, dsn: str, workdir: Path, root: Path = ROOT, timeout: float = TIMEOUT) -> None:
    """Run one example; raise ExampleError when it fails."""
    if example.error:
        raise ExampleError(example.error)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_files(example, workdir)
    env = _environment(dsn, workdir)
    page = str(root / example.page)
    if example.kind == "module":
        assert example.module is not None
        first = example.lines[0] + 1
        try:
            _run_process([sys.executable, "-c", _IMPORT_RUNNER, example.module], example, env, workdir, timeout)
        except ExampleError as e:
            raise ExampleError(f"{e}\n({example.module} is {example.page}:{first} onward)") from None
    elif example.kind == "python":
        script = workdir / ".example.py"
        script.write_text(_padded(example.chunks), encoding="utf-8")
        _run_process([sys.executable, "-c", _PYTHON_RUNNER, page, str(script)], example, env, workdir, timeout)
    elif example.kind == "shell":
        # Named after the page, each line at its line number, so that bash's own messages and the
        # ERR trap point at the page.
        script = workdir / ".sh" / Path(example.page).name
        script.parent.mkdir(exist_ok=True)
        trap = f"trap 'echo \"{example.page}:$LINENO: exit status $? of: $BASH_COMMAND\" >&2' ERR; set -eEuo pipefail\n"
        script.write_text(trap + _padded(example.chunks, first=2), encoding="utf-8")
        _run_process(["bash", str(script)], example, env, workdir, timeout)
    elif example.kind == "sql":
        run_sql(example, dsn, timeout)
    else:
        raise ExampleError(f"{example.id}: cannot run a {example.kind} example")


def statements(chunk: Chunk) -> Iterator[tuple[int, str]]:
    """(line, statement) for each SQL statement of a chunk, psql's backslash commands as ``\\cmd``."""
    text = chunk.text
    i, n, start, line = 0, len(text), 0, chunk.line
    start_line = line

    def emit(upto: int) -> Iterator[tuple[int, str]]:
        piece = text[start:upto]
        lead = _LEADING.match(piece)
        assert lead is not None
        if piece[lead.end() :].strip():
            yield start_line + piece.count("\n", 0, lead.end()), piece[lead.end() :].strip()

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += text[i] == "\n"
                    i += 1
        elif c in "'\"":
            j = i + 1
            while j < n:
                if text[j] == c and text.startswith(c * 2, j):
                    j += 2
                elif text[j] == c:
                    break
                else:
                    j += 1
            line += text.count("\n", i, j)
            i = j + 1
        elif c == "$" and (m := re.match(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$", text[i:])):
            tag = m.group(0)
            j = text.find(tag, i + len(tag))
            j = n if j < 0 else j + len(tag)
            line += text.count("\n", i, j)
            i = j
        elif c == "\\" and _LEADING.fullmatch(text, start, i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            yield line, text[i:j].strip()
            i = start = j
            start_line = line
        elif c == ";":
            yield from emit(i + 1)
            i = start = i + 1
            start_line = line
        else:
            i += 1
    yield from emit(n)


def run_sql(example: Example, dsn: str, timeout: float = TIMEOUT) -> None:
    ms = int(timeout * 1000)
    with psycopg.connect(dsn, options=f"-c statement_timeout={ms} -c lock_timeout={ms}") as conn:
        try:
            for chunk in example.chunks:
                for line, statement in statements(chunk):
                    where = f"{example.page}:{line}"
                    if statement.startswith("\\"):
                        command = statement[1:].split(None, 1)[0] if len(statement) > 1 else ""
                        if command not in _PSQL_DISPLAY:
                            raise ExampleError(f"{where}: psql command {statement!r} cannot run here")
                        continue
                    try:
                        conn.execute(statement)
                    except psycopg.Error as e:
                        diag = e.diag
                        detail = "".join(
                            f"\n{label}: {value}"
                            for label, value in (("DETAIL", diag.message_detail), ("HINT", diag.message_hint))
                            if value
                        )
                        raise ExampleError(
                            f"{where}: {diag.sqlstate or ''} {e.__class__.__name__}: "
                            f"{diag.message_primary or e}{detail}\nin:\n{statement}"
                        ) from None
        finally:
            conn.rollback()
