"""``confledger serve --workers 4`` as real processes on one SQLite log: one socket, four instances.

The supervisor binds once and starts four workers; fresh connections are answered by several of them.
``kill -HUP`` of the main pid (what ``systemctl reload`` sends) makes exactly one worker reload (one
operation, trigger ``signal``), the other three apply it by following the log (four ``instance.applied``),
and no worker is restarted; a worker killed with SIGKILL is started again under its
own instance id; SIGTERM stops every worker gracefully. The log is read directly (``sqlite3``), since
each worker answers HTTP from its own projections.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    EXAMPLE_CONFIG,
    PREFIX,
    REPO,
    full_hash_of,
    keys_beside,
    variant,
)
from tests.integration.api.test_serve_process import (
    GRACEFUL_EXITS,
    Server,
    confledger_serve,
    free_port,
    replace_atomically,
    wait_for,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc for child pids")

WORKERS = 4


def children_of(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc; zombies are not counted): the workers, and
    multiprocessing's resource tracker."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
        state, parent = stat.rpartition(")")[2].split()[:2]
        if int(parent) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def rows(database: Path, query: str, *parameters: object) -> list[tuple[object, ...]]:
    """Read the log directly, read-only; nothing yet while the service has not created it."""
    if not database.exists():
        return []
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute(query, parameters).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # created, not yet migrated
            return []
        raise
    finally:
        connection.close()


def started_instances(database: Path) -> list[tuple[str, int]]:
    """(instance id, pid) of every ``instance.started``, oldest first."""
    found = rows(
        database, "SELECT instance_id, payload FROM events WHERE type = 'instance.started' ORDER BY position"
    )
    return [(str(instance), int(json.loads(str(payload))["pid"])) for instance, payload in found]


def signal_operations(database: Path) -> list[str]:
    found = rows(
        database,
        "SELECT operation_id FROM events WHERE type = 'operation.started' "
        "AND json_extract(payload, '$.trigger') = 'signal' ORDER BY position",
    )
    return [str(operation) for (operation,) in found]


@contextmanager
def serving_workers(workdir: Path, config: Path, port: int) -> Iterator[Server]:
    """``serve --workers 4`` until all four have started; on leaving, no worker is left behind."""
    seen: set[int] = set()
    with confledger_serve(workdir, config, port, run=1, arguments=["--workers", str(WORKERS)]) as server:
        try:
            database = workdir / "confledger.db"
            wait_for(
                "four workers to start",
                lambda: len({i for i, _ in started_instances(database)}) == WORKERS or None,
                timeout=90,
            )
            yield server
        finally:
            seen |= children_of(server.process.pid)
    # confledger_serve has killed the supervisor if it was still running; its workers too, by pid.
    for pid in seen:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def stopped_gracefully_after(
    workdir: Path, config: Path, port: int, arguments: list[str]
) -> Iterator[Server]:
    """``serve`` with ``arguments``; once the block is done, SIGTERM must stop it gracefully. Whatever
    happens, no worker is left behind."""
    with confledger_serve(workdir, config, port, run=1, arguments=arguments) as server:
        try:
            yield server
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=30) in GRACEFUL_EXITS
        finally:
            for pid in children_of(server.process.pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def answering_instance(port: int) -> str:
    """The instance id of whichever worker accepts a fresh connection."""
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as client:
        response = client.get(PREFIX + "/status")
        assert response.status_code == 200, response.text
        return str(response.json()["instance_id"])


def test_four_workers_share_the_socket_reload_once_on_sighup_and_stop_together(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    port = free_port()
    database = tmp_path / "confledger.db"

    with serving_workers(tmp_path, config, port) as server:
        main = server.process.pid
        started = started_instances(database)
        workers = {pid for _, pid in started}
        assert len(workers) == WORKERS
        assert workers <= children_of(main)
        # One instance per worker: the supervisor's host:pid with the worker's suffix, the worker's own pid.
        assert sorted(instance for instance, _ in started) == [
            f"{os.uname().nodename}:{main}/w{i}" for i in range(WORKERS)
        ]
        # Only worker 0 ever loaded the first config; the other three restored it from the log.
        assert rows(database, "SELECT DISTINCT instance_id FROM events WHERE operation_id IS NOT NULL") == [
            (f"{os.uname().nodename}:{main}/w0",)
        ]

        # Fresh connections are accepted by more than one worker (the kernel picks; a few tries suffice).
        answered: set[str] = set()
        wait_for(
            "answers from two workers",
            lambda: (answered.add(answering_instance(port)), len(answered) >= 2)[1] or None,
        )
        assert answered <= {instance for instance, _ in started}

        # kill -HUP of the main pid: one reload for the whole service, through one worker, none restarted.
        changed = variant(database__pool_size=61)
        replace_atomically(config, yaml.safe_dump(changed, sort_keys=False))
        os.kill(main, signal.SIGHUP)
        wait_for("the signal's operation", lambda: len(signal_operations(database)) == 1 or None)
        [operation] = signal_operations(database)
        wait_for(
            "the signal's operation to complete",
            lambda: (
                rows(
                    database,
                    "SELECT 1 FROM events WHERE type = 'operation.completed' AND operation_id = ?",
                    operation,
                )
                or None
            ),
        )
        applied = rows(
            database,
            "SELECT json_extract(payload, '$.hash'), actor FROM events "
            "WHERE type = 'config.applied' AND operation_id = ?",
            operation,
        )
        assert applied == [(full_hash_of(changed, keys_beside(database)), "signal")]
        # No other worker reloads on its own (polled for a while: a second one would show up fast).
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert len(signal_operations(database)) == 1
            time.sleep(0.1)
        assert workers <= children_of(main)
        # Every worker applied it: the one that decided, and the other three by following the log.
        [(new_hash, _)] = applied
        answers = (
            "SELECT instance_id, json_extract(payload, '$.role'), json_extract(payload, '$.outcome') "
            "FROM events WHERE type = 'instance.applied' AND json_extract(payload, '$.hash') = ?"
        )
        wait_for("four instance.applied", lambda: len(rows(database, answers, new_hash)) == WORKERS or None)
        host = f"{os.uname().nodename}:{main}"
        assert sorted(rows(database, answers, new_hash)) == [
            (f"{host}/w0", "decided", "applied"),
            *((f"{host}/w{n}", "followed", "applied") for n in range(1, WORKERS)),
        ]

        # A worker that dies is started again, under its own instance id.
        victim_id, victim = next((i, pid) for i, pid in started if i.endswith("/w2"))
        os.kill(victim, signal.SIGKILL)
        wait_for("the worker's replacement", lambda: len(started_instances(database)) == WORKERS + 1 or None)
        replacement_id, replacement = started_instances(database)[-1]
        assert replacement_id == victim_id
        assert replacement != victim
        assert victim not in children_of(main)
        assert (workers - {victim}) | {replacement} <= children_of(main)

        # SIGTERM: every worker stops gracefully (each records instance.stopped), then the supervisor.
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) in GRACEFUL_EXITS
        stopped = rows(database, "SELECT instance_id FROM events WHERE type = 'instance.stopped'")
        assert sorted(str(instance) for (instance,) in stopped) == sorted({i for i, _ in started})
        assert children_of(main) == set()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (it waits for its new parent to reap it).
    with suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def test_workers_whose_supervisor_was_killed_stop_gracefully_instead_of_serving_on(tmp_path: Path) -> None:
    """kill -9 of the main process (or the OOM killer) tells its workers nothing: each notices it was
    orphaned and stops as on SIGTERM, recording instance.stopped, so no worker keeps the port."""
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    port = free_port()
    database = tmp_path / "confledger.db"
    with serving_workers(tmp_path, config, port) as server:
        workers = {pid for _, pid in started_instances(database)}
        server.process.kill()
        server.process.wait(timeout=10)
        try:
            wait_for(
                "every orphaned worker to stop", lambda: not any(map(pid_alive, workers)) or None, timeout=60
            )
        finally:  # whatever happened, no worker is left serving
            for pid in workers:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        stopped = rows(database, "SELECT instance_id FROM events WHERE type = 'instance.stopped'")
        assert sorted(str(i) for (i,) in stopped) == sorted(i for i, _ in started_instances(database))


GUNICORN = Path(sys.executable).parent / "gunicorn"


@contextmanager
def gunicorn_serving(
    workdir: Path, config: Path, port: int, workers: int
) -> Iterator[tuple[subprocess.Popen[bytes], list[tuple[str, int]]]]:
    """gunicorn with confledger's config module and ``workers`` workers serving ``app()`` on ``config``,
    until every worker has started: the master and the workers' (instance id, pid). Whatever happens,
    neither the master nor a worker is left behind."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("uvicorn_worker")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CONFLEDGER_")}
    environment |= {
        "CONFLEDGER_CONFIG": str(config),
        "CONFLEDGER_MODEL": "confledger.examples.app_config:AppConfig",
        "CONFLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    output = workdir / "gunicorn.log"
    command = [
        str(GUNICORN),
        "-c",
        "python:confledger.api.gunicorn",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--control-socket",
        str(workdir / "gunicorn.ctl"),
        "confledger.api.gunicorn:app()",
    ]
    with output.open("wb") as sink:
        master = subprocess.Popen(
            command, cwd=workdir, env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    database = workdir / "confledger.db"
    started: list[tuple[str, int]] = []
    try:
        wait_for(
            f"{workers} workers to start",
            lambda: (
                len({i for i, pid in started_instances(database) if pid != master.pid}) == workers or None
            ),
            timeout=90,
        )
        started = [(i, pid) for i, pid in started_instances(database) if pid != master.pid]
        yield master, started
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(timeout=10)
        for _, pid in started:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_under_gunicorn_with_the_config_module_sighup_reloads_once_and_restarts_no_worker(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    database = tmp_path / "confledger.db"
    port = free_port()
    with gunicorn_serving(tmp_path, config, port, WORKERS) as (master, started):
        workers = {pid for _, pid in started}
        assert sorted(i for i, _ in started) == [
            f"{os.uname().nodename}:{master.pid}/w{n}" for n in range(WORKERS)
        ]
        assert workers <= children_of(master.pid)
        # The first config was loaded once, by the master, before any worker existed: as worker 0, so
        # the fleet lists the workers alone, the master's load no instance of its own gone.
        loaders = rows(database, "SELECT DISTINCT instance_id FROM events WHERE operation_id IS NOT NULL")
        assert loaders == [(f"{os.uname().nodename}:{master.pid}/w0",)]
        assert {i for i, _ in started_instances(database)} == {i for i, _ in started}
        wait_for("a worker to answer", lambda: answering_instance(port) or None)

        changed = variant(database__pool_size=62)
        replace_atomically(config, yaml.safe_dump(changed, sort_keys=False))
        os.kill(master.pid, signal.SIGHUP)
        wait_for("the signal's operation", lambda: len(signal_operations(database)) == 1 or None)
        [operation] = signal_operations(database)
        wait_for(
            "the config the signal applied",
            lambda: (
                rows(
                    database,
                    "SELECT json_extract(payload, '$.hash') FROM events "
                    "WHERE type = 'config.applied' AND operation_id = ?",
                    operation,
                )
                or None
            ),
        )
        assert rows(
            database,
            "SELECT json_extract(payload, '$.hash') FROM events WHERE type = 'config.applied' AND operation_id = ?",
            operation,
        ) == [(full_hash_of(changed, keys_beside(database)),)]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert len(signal_operations(database)) == 1
            time.sleep(0.1)
        # Gunicorn's own SIGHUP would have replaced every worker by now.
        assert workers <= children_of(master.pid)
        # The oldest worker decided; the other three followed the log.
        [(new_hash,)] = rows(
            database,
            "SELECT json_extract(payload, '$.hash') FROM events WHERE operation_id = ? "
            "AND type = 'config.applied'",
            operation,
        )
        answers = (
            "SELECT json_extract(payload, '$.role') FROM events "
            "WHERE type = 'instance.applied' AND json_extract(payload, '$.hash') = ?"
        )
        wait_for("four instance.applied", lambda: len(rows(database, answers, new_hash)) == WORKERS or None)
        assert sorted(role for (role,) in rows(database, answers, new_hash)) == ["decided"] + ["followed"] * 3
        assert len(started_instances(database)) == WORKERS + 1  # the master's first load, the four workers

        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=30) == 0
        stopped = rows(database, "SELECT instance_id FROM events WHERE type = 'instance.stopped'")
        # The master's first load as w0, then the four workers.
        first_loader = f"{os.uname().nodename}:{master.pid}/w0"
        assert sorted(str(i) for (i,) in stopped) == sorted([first_loader, *(i for i, _ in started)])


def test_with_watch_only_worker_0_watches_the_file_and_a_change_is_one_reload(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    database = tmp_path / "confledger.db"
    port = free_port()
    arguments = ["--workers", "2", "--watch", "--poll-interval", "0.2"]
    with stopped_gracefully_after(tmp_path, config, port, arguments) as server:
        wait_for("two workers to start", lambda: len(started_instances(database)) == 2 or None, timeout=90)
        main = server.process.pid
        watching = rows(database, "SELECT instance_id FROM events WHERE type = 'file_watch.enabled'")
        assert watching == [(f"{os.uname().nodename}:{main}/w0",)]

        changed = variant(database__pool_size=63)
        replace_atomically(config, yaml.safe_dump(changed, sort_keys=False))
        reloads = (
            "SELECT instance_id FROM events WHERE type = 'operation.started' "
            "AND json_extract(payload, '$.trigger') = 'file_watch'"
        )
        wait_for("the file's reload", lambda: rows(database, reloads) or None)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert rows(database, reloads) == [(f"{os.uname().nodename}:{main}/w0",)]
            time.sleep(0.1)


def _statuses(port: int, connections: int = 12) -> dict[str, bool]:
    """``file_watching_enabled`` as each worker that answers one of ``connections`` fresh ones says it."""
    seen: dict[str, bool] = {}
    for _ in range(connections):
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as client:
            status = client.get(PREFIX + "/status").json()
            seen[status["instance_id"]] = status["file_watching_enabled"]
    return seen


def _toggle(port: int, action: str) -> str:
    """POST /file-watch/<action> on a fresh connection; the instance id of the worker that answered."""
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as client:
        response = client.post(PREFIX + f"/file-watch/{action}", params={"poll_interval": 0.2})
        assert response.status_code == 200, response.text
        answered = client.get(PREFIX + "/status").json()["instance_id"]
    return str(answered)


@contextmanager
def two_workers(launcher: str, workdir: Path, config: Path, port: int) -> Iterator[int]:
    """Two workers of one service, under ``serve --workers`` or gunicorn with confledger's config module,
    until both have started; the main process's pid. Stopped gracefully after the block."""
    database = workdir / "confledger.db"

    def both_started() -> bool | None:
        return len([i for i, _ in started_instances(database) if "/w" in i]) == 2 or None

    if launcher == "serve":
        with stopped_gracefully_after(workdir, config, port, ["--workers", "2"]) as server:
            wait_for("two workers to start", both_started, timeout=90)
            yield server.process.pid
        return
    with gunicorn_serving(workdir, config, port, 2) as (master, _):
        yield master.pid
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=30) == 0


@pytest.mark.parametrize("launcher", ["serve", "gunicorn"])
def test_file_watching_turned_on_and_off_through_any_worker_is_one_watcher_for_all(
    tmp_path: Path, launcher: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    database = tmp_path / "confledger.db"
    port = free_port()
    reloads = (
        "SELECT instance_id FROM events WHERE type = 'operation.started' "
        "AND json_extract(payload, '$.trigger') = 'file_watch'"
    )
    with two_workers(launcher, tmp_path, config, port) as main:
        worker_0 = f"{os.uname().nodename}:{main}/w0"
        both = [worker_0, worker_0[:-1] + "1"]
        # Asked three times on fresh connections (whichever worker takes each): on for both workers.
        for _ in range(3):
            _toggle(port, "enable")
        wait_for("both workers to say it is on", lambda: _statuses(port) == dict.fromkeys(both, True) or None)
        # Changed at once: worker 0 folds the toggle within a follow interval and starts its watcher then,
        # so this change may come before that watcher exists: it is looked for as the watcher starts.
        replace_atomically(config, yaml.safe_dump(variant(database__pool_size=64), sort_keys=False))
        wait_for("the file's reload", lambda: rows(database, reloads) or None)
        time.sleep(1.5)  # a second watcher, had one started, would have reloaded by now
        assert rows(database, reloads) == [(worker_0,)]  # one reload, by the one watcher

        _toggle(port, "disable")
        wait_for(
            "both workers to say it is off", lambda: _statuses(port) == dict.fromkeys(both, False) or None
        )
        # Changed at once: worker 0's watcher may still be running, but what it sees is not reloaded
        # once the log says watching is off.
        replace_atomically(config, yaml.safe_dump(variant(database__pool_size=65), sort_keys=False))
        time.sleep(1.5)
        assert rows(database, reloads) == [(worker_0,)]  # watched by nobody now


def test_gunicorn_workers_whose_master_was_killed_stop_gracefully(tmp_path: Path) -> None:
    """The same under gunicorn: uvicorn's worker never looks at its master, confledger's does."""
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    database = tmp_path / "confledger.db"
    with gunicorn_serving(tmp_path, config, free_port(), 2) as (master, started):
        workers = {pid for _, pid in started}
        master.kill()
        master.wait(timeout=10)
        wait_for(
            "every orphaned worker to stop", lambda: not any(map(pid_alive, workers)) or None, timeout=60
        )
        stopped = rows(database, "SELECT instance_id FROM events WHERE type = 'instance.stopped'")
        assert {str(i) for (i,) in stopped} >= {i for i, _ in started}
