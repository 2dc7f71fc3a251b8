"""The README, followed as a newcomer would: its two set-up commands and its tour, run as written in a fresh
copy of the repository against the service they start, each step's answer checked against the `# ->` line
the README shows under it. The README cannot drift from the product without this test failing.

Two liberties, both to keep the test independent of the machine: the service listens on a free port
instead of 8000, and the test command's run is narrowed with ``PYTEST_ADDOPTS`` to two quick unit modules
(the whole suite is what CI runs with that same command).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANY = "…"
NOT_COPIED = shutil.ignore_patterns(
    ".venv", "demo", "__pycache__", "*.pyc", "*.db", "*.db-*", "*.key", "*-token", ".git", ".hypothesis",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.egg-info", "build", "dist",
)  # fmt: skip


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def bash_blocks(section: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def steps(block: str) -> list[Step]:
    """Commands in order (backslash continuations joined), each with the `# ->` lines under it."""
    found: list[Step] = []
    pending = ""
    for line in block.splitlines():
        stripped = line.strip()
        if stripped.startswith("# ->"):
            found[-1].expected.append(stripped[len("# ->") :].strip())
        elif not stripped or stripped.startswith("#"):
            continue
        elif stripped.endswith("\\"):
            pending += stripped[:-1] + " "
        else:
            found.append(Step(pending + stripped))
            pending = ""
    return found


def matches(expected: object, actual: object) -> bool:
    """``expected`` is part of ``actual``: keys a subset, lists a prefix, ``…`` anything."""
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) >= len(expected)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=False))
        )
    return expected == actual


def check(step: Step, output: str) -> None:
    for expected in step.expected:
        if expected.startswith("{"):
            wanted = json.loads(expected.replace(ANY, json.dumps(ANY)))
            answer = json.loads(output[output.index("{") :])
            assert matches(wanted, answer), f"{step.command}\nexpected {expected}\ngot {output[:2000]}"
        else:
            assert expected in output, f"{step.command}\nexpected {expected!r}\ngot {output[:2000]}"


def run_block(workdir: Path, block: list[Step], preamble: list[str], env: dict[str, str]) -> None:
    """One bash process for the block, as a user's shell; a marker before each command splits the output."""
    script = ["set -euo pipefail", *preamble]
    for number, step in enumerate(block):
        script += [f"printf '\\n@@step {number}@@\\n'", step.command]
    # From a file, not `bash -c`: the tour's `pgrep -f "confledger serve …"` must not find this shell.
    path = workdir / f"block-{abs(hash(tuple(s.command for s in block)))}.sh"
    path.write_text("\n".join(script) + "\n", encoding="utf-8")
    result = subprocess.run(
        ["bash", path.name], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"the block failed:\n{result.stdout}\n{result.stderr}"
    outputs = re.split(r"\n@@step \d+@@\n", "\n" + result.stdout)[1:]
    assert len(outputs) == len(block), result.stdout
    for step, output in zip(block, outputs, strict=True):
        check(step, output)


def run_audit_queries(workdir: Path) -> None:
    """The README's "Auditing with SQL" against the tour's log: its sqlite3 command names that file, and every query
    runs there and finds rows (through Python's sqlite3, the same engine, as the sqlite3 shell may not be
    installed). A wrong path would have the sqlite3 shell create an empty database and say no such table."""
    import sqlite3

    section = sections((ROOT / "README.md").read_text(encoding="utf-8"))["Auditing with SQL"]
    ((command,),) = [bash_blocks(section)]
    shell = re.fullmatch(r'sqlite3 -box (\S+) "\n(.*)"\n', command, flags=re.S)
    assert shell is not None, command
    database = workdir / shell.group(1)
    assert database.is_file(), f"the README's sqlite3 command names {shell.group(1)}, not the tour's log"
    queries = [shell.group(2).replace('\\"', '"')]
    queries += re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        for query in queries:
            rows = connection.execute(query.replace("'…'", "'-'")).fetchall()
            # the first two (the operations, the config's history) hold the tour's operations
            if query in queries[:2]:
                assert rows, query


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answered {url} within {timeout:g} s")


@dataclass
class Readme:
    run: str
    test: str
    tour: list[list[Step]]
    cli: list[Step]


@pytest.fixture(scope="module")
def readme() -> Readme:
    parts = sections((ROOT / "README.md").read_text(encoding="utf-8"))
    run, test = (block.strip() for block in bash_blocks(parts["Run it, test it"]))
    tour_blocks = bash_blocks(parts["A tour"])
    assert len(tour_blocks) == 3, "the tour: before the restart, after it, the command line"
    return Readme(run, test, [steps(tour_blocks[0]), steps(tour_blocks[1])], steps(tour_blocks[2]))


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    target = tmp_path / "confledger"
    shutil.copytree(ROOT, target, ignore=NOT_COPIED)
    return target


@pytest.fixture
def environment() -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("CONFLEDGER_", "PYTEST_", "VIRTUAL_ENV"))
    }
    clean["PATH"] = os.pathsep.join(p for p in clean.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return clean


@pytest.fixture
def serve(clone: Path, readme: Readme, environment: dict[str, str]) -> Iterator[tuple[int, callable]]:  # type: ignore[valid-type]
    port = _free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        log = (clone / f"serve-{len(processes)}.log").open("wb")
        (clone / "serve.sh").write_text(f"{readme.run} --port {port}\n", encoding="utf-8")
        process = subprocess.Popen(
            ["bash", "serve.sh"],
            cwd=clone,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        _wait_for(f"http://127.0.0.1:{port}/healthz", timeout=300)
        _wait_for(f"http://127.0.0.1:{port}/readyz", timeout=30)

    def stop() -> None:
        process = processes[-1]
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=60) is not None

    start()
    try:
        yield port, (start, stop)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_the_readme_works_as_written(
    clone: Path,
    readme: Readme,
    environment: dict[str, str],
    serve: tuple[int, tuple],  # type: ignore[type-arg]
) -> None:
    port, (start, stop) = serve
    first, after_restart = (
        [Step(s.command.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), s.expected) for s in block]
        for block in readme.tour
    )
    run_block(clone, first, [], environment)
    # The shell's variables from the first block, as a user's shell keeps them.
    variables = [step.command for step in first if re.match(r"^[A-Z_]+=", step.command)]

    stop()
    start()
    run_block(clone, after_restart, variables, environment)
    stop()

    run_block(clone, readme.cli, [], environment)  # reading the log while the service is down
    run_audit_queries(clone)

    # The test command, as written, in the same fresh copy: what is proved here is that it installs and
    # runs the suite from scratch, so its run is narrowed to two quick modules of it (see above). The
    # suite running this test runs all of them on the same tree anyway; the whole unit run in here
    # was about a minute of the suite's ten.
    result = subprocess.run(
        ["bash", "-c", readme.test],
        cwd=clone,
        env={
            **environment,
            "PYTEST_ADDOPTS": "-q -p no:cacheprovider tests/unit/test_public_api.py tests/unit/test_layering.py",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_the_plain_python_example_runs(tmp_path: Path) -> None:
    """The README's ConfigReloader example, as written, beside a copy of the example config."""
    import sys

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (example,) = [
        block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "asyncio.run(" in block
    ]
    shutil.copy(ROOT / "examples" / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "example.py").write_text(example, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONFLEDGER_")}
    result = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "20"  # database.pool_size of the example config


def test_the_python_examples_type_check(tmp_path: Path) -> None:
    """Every ``python`` block of the README passes ``mypy --strict`` as a user's own module would."""
    import sys

    # The installed shape (as tests/unit/test_code_quality.py shows it to mypy): an editable install's
    # import hook is invisible to mypy, so "confledger" alone would resolve and its subpackages not. Its
    # own modules are analysed, their errors left out (follow-imports=silent), as for an installed package.
    package = tmp_path / "confledger"
    package.mkdir()
    for path in (ROOT / "confledger").iterdir():
        (package / path.name).symlink_to(path)
    for layer in ("store", "projections", "api", "migrations", "examples"):
        (package / layer).symlink_to(ROOT / layer, target_is_directory=True)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 2, "the FastAPI embedding and the plain Python example"
    names = []
    for number, block in enumerate(blocks):
        (tmp_path / f"readme_example_{number}.py").write_text(block, encoding="utf-8")
        names.append(f"readme_example_{number}.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--no-incremental",
            "--config-file",
            "/dev/null",
            *names,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _cli_options() -> dict[str, set[str]]:
    """Every ``confledger`` command ("db upgrade" for a subgroup's) with the options it takes."""
    import click
    from typer.main import get_command

    from confledger.api.cli import app

    found: dict[str, set[str]] = {}

    def walk(command: click.Command, path: str) -> None:
        found[path] = {"--help"} | {
            name for param in command.params for name in (*param.opts, *param.secondary_opts)
        }
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(get_command(app), "")
    return found


def test_every_command_option_and_variable_the_readme_names_exists() -> None:
    """A ``confledger <command> --option`` the README writes is one that command takes, and a
    ``CONFLEDGER_*`` variable it names is one that is read: a renamed or dropped option or setting
    fails here, not in a reader's shell."""
    from confledger.api.settings import Settings

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = _cli_options()
    checked = 0
    for mention in re.finditer(r"confledger ((?:db )?[a-z]+)([^`\n|#]*)", text):
        command, rest = mention.group(1), re.split(r"&&|;", mention.group(2))[0]
        if command not in commands:
            continue  # prose ("confledger runs on…"), not a command line
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert option in commands[command], f"README: confledger {command} has no {option}"
            checked += 1
    assert checked > 20, checked
    # Options named on their own (`--no-docs`, `--workers N`) belong to some command; the benchmarks'
    # (`--quick`, `--only`, `--spacing`) are checked by their own parsers.
    every = set().union(*commands.values()) | {"--quick", "--only", "--spacing"}
    for option in re.findall(r"`(--[a-z][a-z-]*)[^`]*`", text):
        assert option in every, f"README: no confledger command takes {option}"
    read = {f"CONFLEDGER_{name.upper()}" for name in Settings.model_fields}
    read |= {"CONFLEDGER_URL", "CONFLEDGER_TEST_PG_URL"}  # the CLI's service URL; the suite's server
    named = set(re.findall(r"CONFLEDGER_[A-Z_]+[A-Z]", text))
    assert named - read == set(), "the README names variables nothing reads"
