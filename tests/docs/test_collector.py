"""The collector and runners of tests/docs/examples.py, on small pages written here."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from tests.docs import examples
from tests.docs.examples import Chunk, Example, ExampleError


def page(text: str) -> list[Example]:
    return examples.examples("page.md", textwrap.dedent(text).lstrip("\n"))


def one(text: str) -> Example:
    found = page(text)
    assert len(found) == 1, found
    return found[0]


# Finding blocks


def test_blocks_of_each_kind_with_their_fence_line_as_id() -> None:
    found = page(
        """
        # Title

        ```python
        print(1)
        ```

        ```py
        print(2)
        ```

        ```sql
        SELECT 1;
        ```

        ```sh
        true
        ```

        ```bash
        true
        ```

        ```js
        console.log(1)
        ```

        ```yaml
        a: 1
        ```

        ```
        no language
        ```
        """
    )
    assert [(e.id, e.kind) for e in found] == [
        ("page.md:3", "python"),
        ("page.md:7", "python"),
        ("page.md:11", "sql"),
        ("page.md:15", "shell"),
        ("page.md:19", "shell"),
    ]
    assert found[0].chunks == [Chunk(4, "print(1)\n")]


def test_tildes_longer_fences_and_blocks_indented_in_a_list() -> None:
    found = page(
        """
        ~~~python
        a = 1
        ~~~

        ````python
        s = '''
        ```
        '''
        ````

        - an item:

            ```python
            if True:
                b = 2
            ```
        """
    )
    assert [e.line for e in found] == [1, 5, 13]
    assert found[1].chunks[0].text == "s = '''\n```\n'''\n"
    assert found[2].chunks == [Chunk(14, "if True:\n    b = 2\n")]


def test_an_info_string_with_attributes_keeps_its_language() -> None:
    assert one('```python title="x.py" linenums="1"\nx = 1\n```\n').kind == "python"
    assert one("```{.python}\nx = 1\n```\n").kind == "python"


def test_console_blocks_run_their_dollar_lines_only() -> None:
    example = one(
        """
        ```console
        $ pgjobs queues
        queue  paused
        $ pgjobs queue limit emails \\
            --rate 10/s
        done
        ```
        """
    )
    assert example.kind == "shell"
    assert example.chunks[0].text.splitlines() == [
        "pgjobs queues",
        "",
        "pgjobs queue limit emails \\",
        "    --rate 10/s",
        "",
    ]


def test_pages_are_the_readme_and_docs_without_the_built_site(tmp_path: Path) -> None:
    for name in ["README.md", "docs/a.md", "docs/guides/b.md", "docs/site/c.md", "CHANGELOG.md", "docs/x.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("```python\nx = 1\n```\n")
    assert [p.relative_to(tmp_path).as_posix() for p in examples.pages(tmp_path)] == [
        "README.md",
        "docs/a.md",
        "docs/guides/b.md",
    ]
    assert [e.id for e in examples.collect(tmp_path)] == ["README.md:1", "docs/a.md:1", "docs/guides/b.md:1"]


# Module files


@pytest.mark.parametrize(
    ("first", "module"),
    [
        ("# myapp/tasks.py", "myapp/tasks.py"),
        ("#myapp/tasks.py", "myapp/tasks.py"),
        ("# tasks.py", "tasks.py"),
        ("# myapp/telemetry.py: imported by the application at start-up", "myapp/telemetry.py"),
        ("# a comment about tasks.py", None),
        ("# /etc/tasks.py", None),
        ("# ../tasks.py", None),
        ("# myapp/tasks.pyc", None),
        ("import pgjobs  # myapp/tasks.py", None),
    ],
)
def test_a_first_line_comment_naming_a_py_path_makes_a_module(first: str, module: str | None) -> None:
    example = one(f"```python\n{first}\nx = 1\n```\n")
    assert example.module == module
    assert example.kind == ("module" if module else "python")


def test_modules_reach_the_later_examples_of_their_page_the_latest_winning() -> None:
    found = page(
        """
        ```python
        early()
        ```

        ```python
        # app/tasks.py
        version = 1
        ```

        ```sh
        pgjobs worker app.tasks
        ```

        ```python
        # app/tasks.py
        version = 2
        ```

        ```python
        # app/util.py
        ```

        ```python
        from app.tasks import version
        ```
        """
    )
    assert [(e.kind, sorted(e.files.items())) for e in found] == [
        ("python", []),
        ("module", [("app/tasks.py", "# app/tasks.py\nversion = 1\n")]),
        ("shell", [("app/tasks.py", "# app/tasks.py\nversion = 1\n")]),
        ("module", [("app/tasks.py", "# app/tasks.py\nversion = 2\n")]),
        ("module", [("app/tasks.py", "# app/tasks.py\nversion = 2\n"), ("app/util.py", "# app/util.py\n")]),
        ("python", [("app/tasks.py", "# app/tasks.py\nversion = 2\n"), ("app/util.py", "# app/util.py\n")]),
    ]
    assert examples.examples("other.md", "```python\nimport app\n```\n")[0].files == {}


def test_a_skipped_module_is_still_written_for_the_page() -> None:
    module, user = page(
        """
        <!-- example: skip (needs a package we lack) -->
        ```python
        # app/tasks.py
        import missing
        ```

        ```python
        print(1)
        ```
        """
    )
    assert module.skip == "needs a package we lack"
    assert "app/tasks.py" in user.files


# Markers


@pytest.mark.parametrize(
    "marker",
    [
        "<!-- example: skip (runs until stopped) -->",
        "<!-- example: skip runs until stopped -->",
        "<!-- example: skip: runs until stopped -->",
        "<!--example:skip (runs until stopped)-->",
        "<!-- example: skip\n     runs until stopped\n-->",
    ],
)
def test_skip_takes_a_reason(marker: str) -> None:
    example = one(f"{marker}\n```sh\npgjobs worker app\n```\n")
    assert (example.skip, example.error) == ("runs until stopped", None)


@pytest.mark.parametrize("marker", ["<!-- example: skip -->", "<!-- example: skip () -->", "<!-- example: skip: -->"])
def test_a_skip_without_a_reason_is_an_error(marker: str) -> None:
    example = one(f"{marker}\n```sh\ntrue\n```\n")
    assert example.error == "page.md:1: `example: skip` needs a reason: <!-- example: skip (why) -->"
    assert example.skip is None


def test_markers_may_stand_a_few_blank_lines_and_other_comments_away() -> None:
    example = one("<!-- example: skip (why) -->\n\n<!-- a note -->\n\n```sh\ntrue\n```\n")
    assert example.skip == "why"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<!-- example: skipp (why) -->\n```sh\ntrue\n```\n", "page.md:1: unknown marker `example: skipp`"),
        ("<!-- example: skip (why) -->\nSome prose.\n\n```sh\ntrue\n```\n", "page.md:1: `example: skip` marker is not"),
        ("Prose.\n\n<!-- example: skip (why) -->\n", "page.md:3: `example: skip` marker is not followed"),
        ("<!-- example: skip (why) -->\n```js\nx()\n```\n", "page.md:1: `example: skip` marker on a block that is not"),
        ("<!-- example: setup\nimport os\n", "page.md:1: `<!-- example:` comment never closed"),
        ("<!-- example: continue -->\n```python\nx = 1\n```\n", "page.md:2: `example: continue` but no python block"),
        ("<!-- example: continue please -->\n```python\nx = 1\n```\n", "page.md:1: `example: continue` takes nothing"),
        (
            "<!-- example: setup\nimport os\n-->\n<!-- example: setup\nimport sys\n-->\n```python\nx = 1\n```\n",
            "page.md:7: two `example: setup` markers",
        ),
        ("<!-- example: setup\nimport os\n-->\n```python\n# app/tasks.py\n```\n", "page.md:4: a module file"),
    ],
)
def test_wrong_markers_are_errors_that_name_their_line(text: str, error: str) -> None:
    errors = [e.error for e in page(text) if e.error]
    assert len(errors) == 1 and errors[0].startswith(error), errors


def test_markers_inside_a_block_are_text() -> None:
    assert (
        page(
            """
            ````markdown
            <!-- example: skip -->
            ```python
            broken(
            ```
            ````
            """
        )
        == []
    )


def test_setup_is_hidden_code_at_its_own_lines() -> None:
    example = one(
        """
        Prose.

        <!-- example: setup
        import pgjobs
        dsn = pgjobs.resolve_dsn()
        -->
        ```python
        print(dsn)
        ```
        """
    )
    assert example.chunks == [Chunk(4, "import pgjobs\ndsn = pgjobs.resolve_dsn()\n"), Chunk(8, "print(dsn)\n")]
    one_line = one("<!-- example: setup SELECT 1; -->\n```sql\nSELECT 2;\n```\n")
    assert one_line.chunks == [Chunk(1, "SELECT 1;\n"), Chunk(3, "SELECT 2;\n")]


def test_continue_joins_the_previous_example_of_its_kind() -> None:
    found = page(
        """
        ```python
        x = 1
        ```

        ```sql
        SELECT 1;
        ```

        <!-- example: continue -->
        ```python
        print(x)
        ```

        <!-- example: continue -->
        <!-- example: setup
        y = 2
        -->
        ```python
        print(x + y)
        ```
        """
    )
    assert [e.id for e in found] == ["page.md:1", "page.md:5"]
    assert found[0].lines == [1, 10, 18]
    assert found[0].chunks == [
        Chunk(2, "x = 1\n"),
        Chunk(11, "print(x)\n"),
        Chunk(16, "y = 2\n"),
        Chunk(19, "print(x + y)\n"),
    ]


def test_continuing_a_skipped_example_skips_it_too_and_a_skipped_continue_stands_alone() -> None:
    found = page(
        """
        <!-- example: skip (why) -->
        ```sh
        pgjobs worker app
        ```

        <!-- example: continue -->
        ```sh
        pgjobs workers
        ```

        <!-- example: continue -->
        <!-- example: skip (because) -->
        ```sh
        pgjobs dashboard
        ```
        """
    )
    assert [(e.id, e.skip, e.lines) for e in found] == [("page.md:2", "why", [2, 7]), ("page.md:13", "because", [13])]


def test_examples_that_start_worker_processes_are_known() -> None:
    found = page(
        """
        ```sh
        pgjobs queues
        ```

        <!-- example: setup
        pgjobs worker app.tasks &
        -->
        ```sh
        pgjobs workers
        ```
        """
    )
    assert [e.starts_processes for e in found] == [False, True]


# SQL statements


def test_statements_split_where_psql_would_with_their_lines() -> None:
    text = textwrap.dedent(
        """\
        SELECT 'a;b', "c;d" FROM t;  -- a comment; with a semicolon
        SELECT $$x;y$$, $f$ ; $f$,
               'it''s';
        /* a comment; */ SELECT 3; SELECT 4
        ;
        \\x
        -- only a comment;
        SELECT 5
        """
    )
    assert list(examples.statements(Chunk(10, text))) == [
        (10, "SELECT 'a;b', \"c;d\" FROM t;"),
        (11, "SELECT $$x;y$$, $f$ ; $f$,\n       'it''s';"),
        (13, "/* a comment; */ SELECT 3;"),
        (13, "SELECT 4\n;"),
        (15, "\\x"),
        (17, "SELECT 5"),
    ]


def test_padding_puts_each_line_at_its_line_of_the_page() -> None:
    assert examples._padded([Chunk(3, "a\nb\n"), Chunk(7, "c\n")]) == "\n\na\nb\n\n\nc\n"
    with pytest.raises(ExampleError):
        examples._padded([Chunk(5, "a\nb\n"), Chunk(6, "c\n")])


# Running: a broken example fails, and says where


def run(text: str, dsn: str, tmp_path: Path, timeout: float = examples.TIMEOUT) -> None:
    """Write page.md under tmp_path and run each of its examples there."""
    text = textwrap.dedent(text).lstrip("\n")
    (tmp_path / "page.md").write_text(text)
    for n, example in enumerate(examples.examples("page.md", text)):
        examples.run(example, dsn, tmp_path / f"work{n}", root=tmp_path, timeout=timeout)


def failure(text: str, dsn: str, tmp_path: Path, timeout: float = examples.TIMEOUT) -> str:
    with pytest.raises(ExampleError) as info:
        run(text, dsn, tmp_path, timeout)
    return str(info.value)


def test_python_examples_pass_share_modules_and_await(dsn: str, tmp_path: Path) -> None:
    run(
        """
        ```python
        # app/tasks.py
        import pgjobs


        @pgjobs.task
        async def add(a: int, b: int) -> int:
            return a + b
        ```

        <!-- example: setup
        import pgjobs
        -->
        ```python
        from app.tasks import add

        job = await pgjobs.enqueue_async(add, 1, 2)  # on an event loop
        same = pgjobs.enqueue(add, 1, 2)  # a sync call between awaits runs outside it
        assert job.task == "app.tasks.add" and same.id == job.id + 1
        ```

        <!-- example: continue -->
        ```python
        assert job.status == "queued"
        ```
        """,
        dsn,
        tmp_path,
    )


def test_a_python_error_fails_with_the_line_of_the_page(dsn: str, tmp_path: Path) -> None:
    message = failure(
        """
        Prose.

        ```python
        x = 1
        print(y)
        ```
        """,
        dsn,
        tmp_path,
    )
    assert message.startswith("page.md:3: exit status 1")
    assert f'File "{tmp_path / "page.md"}", line 5' in message
    assert "print(y)" in message and "NameError: name 'y' is not defined" in message


def test_a_continued_example_fails_with_the_line_of_the_later_block(dsn: str, tmp_path: Path) -> None:
    message = failure(
        """
        ```python
        x = 1
        ```

        <!-- example: continue -->
        ```python
        assert x == 2, "not two"
        ```
        """,
        dsn,
        tmp_path,
    )
    assert message.startswith("page.md:1, page.md:6: exit status 1")
    assert f'File "{tmp_path / "page.md"}", line 7' in message and "AssertionError: not two" in message


def test_a_module_that_does_not_import_fails(dsn: str, tmp_path: Path) -> None:
    message = failure("```python\n# app/tasks.py\nimport no_such_module\n```\n", dsn, tmp_path)
    assert "ModuleNotFoundError: No module named 'no_such_module'" in message
    assert "(app/tasks.py is page.md:2 onward)" in message


def test_the_example_runs_on_its_own_fresh_database(dsn: str, tmp_path: Path) -> None:
    run(
        """
        ```python
        import os
        import psycopg

        assert os.environ["PGJOBS_DSN"] == os.environ["EXPECTED"]
        with psycopg.connect(os.environ["PGJOBS_DSN"]) as conn:
            assert conn.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (0,)
        ```
        """.replace('os.environ["EXPECTED"]', repr(dsn)),
        dsn,
        tmp_path,
    )


def test_a_sql_error_fails_with_its_line_and_statement(dsn: str, tmp_path: Path) -> None:
    message = failure(
        """
        ```sql
        SELECT pgjobs.enqueue('a.task');
        SELECT pgjobs.enqueue('a.task',
                              queue => 'no spaces allowed');
        ```
        """,
        dsn,
        tmp_path,
    )
    assert message.startswith("page.md:3: 22023 ")
    assert "queue" in message and "no spaces allowed" in message


def test_sql_runs_in_one_transaction_that_is_rolled_back(dsn: str, tmp_path: Path) -> None:
    run(
        """
        ```sql
        CREATE TABLE t (x int);
        INSERT INTO t VALUES (1);
        \\x
        SELECT pgjobs.enqueue('a.task');
        ```

        <!-- example: continue -->
        ```sql
        SELECT x / (SELECT count(*) FROM pgjobs.jobs)::int FROM t;
        ```
        """,
        dsn,
        tmp_path,
    )
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT to_regclass('t'), (SELECT count(*) FROM pgjobs.jobs)").fetchone() == (None, 0)


def test_a_psql_command_that_does_something_fails(dsn: str, tmp_path: Path) -> None:
    message = failure("```sql\n\\copy t from 'x'\n```\n", dsn, tmp_path)
    assert message.startswith("page.md:2: psql command")


def test_a_shell_example_fails_at_its_first_failing_command(dsn: str, tmp_path: Path) -> None:
    message = failure(
        """
        ```sh
        pgjobs queues
        pgjobs queue limit emails --rate 10/s
        pgjobs job 999999
        echo never
        ```
        """,
        dsn,
        tmp_path,
    )
    assert "page.md:4: exit status" in message and "of: pgjobs job 999999" in message
    assert "never" not in message.replace("echo never", "")


def test_a_shell_example_runs_this_checkouts_pgjobs_in_a_home_of_its_own(dsn: str, tmp_path: Path) -> None:
    run(
        """
        ```sh
        test "$(command -v pgjobs)" = "$PWD/.bin/pgjobs"
        test "$HOME" = "$PWD/.home"
        pgjobs dsn | grep -q "dbname=$(echo "$PGJOBS_DSN" | sed 's/.*dbname=//; s/ .*//')"
        python -c 'import pgjobs, sys; assert pgjobs.__file__.startswith(sys.argv[1])' "$(dirname "$PWD")"
        ```
        """.replace('"$(dirname "$PWD")"', repr(str(examples.ROOT))),
        dsn,
        tmp_path,
    )


def test_a_background_process_neither_holds_nor_outlives_its_example(dsn: str, tmp_path: Path) -> None:
    started = time.monotonic()
    run("```sh\nsleep 30 &\necho $! > pid\n```\n", dsn, tmp_path)
    assert time.monotonic() - started < 15
    pid = int((tmp_path / "work0" / "pid").read_text())
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid} still runs")


def test_an_example_that_runs_too_long_fails(dsn: str, tmp_path: Path) -> None:
    message = failure("```python\nimport time\nprint('started', flush=True)\ntime.sleep(30)\n```\n", dsn, tmp_path, 2)
    assert message.startswith("page.md:1: still running after 2 s") and "started" in message


def test_a_wrong_marker_fails_its_test(dsn: str, tmp_path: Path) -> None:
    assert failure("<!-- example: skip -->\n```sh\ntrue\n```\n", dsn, tmp_path).startswith(
        "page.md:1: `example: skip` needs a reason"
    )


def test_the_documentation_has_examples_of_every_kind_that_run() -> None:
    # Guards against a collector that finds nothing (a renamed directory, a changed fence style).
    found = examples.collect(examples.docs_root())
    running = {e.kind for e in found if not e.skip and not e.error}
    assert {"python", "module", "sql", "shell"} <= running, running
