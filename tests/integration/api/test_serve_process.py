"""``confledger serve`` as a real process: SIGHUP, file watching, SIGTERM and a restart.

The console script next to the interpreter is started on a free port with the example model, an admin
token from the environment and the default log (an SQLite file next to the config). The test speaks
HTTP to it, signals it, rewrites its config file both atomically and in place, stops it, starts it
again, and checks that what the log says survived the restart unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    EXAMPLE_CONFIG,
    FIRECRAWL_KEY,
    OPENAI_KEY,
    PREFIX,
    REPO,
    full_hash_of,
    keys_beside,
    variant,
)

CONFLEDGER = Path(sys.executable).parent / "confledger"
T = TypeVar("T")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX-only")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float = 20.0, every: float = 0.05) -> T:
    """Poll ``probe`` until it returns something other than None (or fail after a generous timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    client: httpx.Client
    output: Path

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(PREFIX + path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, **params: Any) -> Any:
        response = self.client.post(PREFIX + path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def count(self, trigger: str) -> int:
        return int(self.get("/history", trigger=trigger, limit=1)["total_count"])

    def operations(self, trigger: str) -> list[dict[str, Any]]:
        return list(self.get("/history", trigger=trigger, limit=100)["operations"])


@contextmanager
def confledger_serve(
    workdir: Path,
    config: Path,
    port: int,
    run: int,
    *,
    arguments: Sequence[str] = (),
    variables: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """Start ``confledger serve`` and wait until it is ready; on leaving, make sure it is gone."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CONFLEDGER_")}
    environment["CONFLEDGER_ADMIN_TOKEN"] = ADMIN_TOKEN
    environment.update(variables or {})
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    output = workdir / f"serve-{run}.log"
    command = [
        str(CONFLEDGER),
        "serve",
        "--config",
        str(config),
        "--model",
        "confledger.examples.app_config:AppConfig",
        "--port",
        str(port),
        *arguments,
    ]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=workdir, env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )
    try:

        def ready() -> bool | None:
            if process.poll() is not None:
                raise AssertionError(f"confledger serve exited early:\n{output.read_text(errors='replace')}")
            try:
                return True if client.get("/readyz").status_code == 200 else None
            except httpx.TransportError:
                return None

        wait_for("/readyz", ready, timeout=60)
        yield Server(process, client, output)
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


# How a gracefully stopped server may exit: 0, or by the SIGTERM uvicorn re-raises after its graceful
# shutdown (uvicorn >= 0.29 does, so the parent sees "terminated by SIGTERM", which systemd counts as a
# clean stop). Anything else - a non-zero status, SIGKILL, a hang - fails.
GRACEFUL_EXITS = (0, -signal.SIGTERM)


def stop(server: Server) -> None:
    """SIGTERM, then a graceful exit within a generous timeout, with the lifespan's shutdown completed."""
    server.process.send_signal(signal.SIGTERM)
    returncode = server.process.wait(timeout=15)
    printed = server.output.read_text(errors="replace")
    assert returncode in GRACEFUL_EXITS, printed
    assert "Application shutdown complete" in printed


def write_in_place_slowly(path: Path, text: str) -> None:
    """The non-atomic way: truncate, write half, flush, pause, write the rest."""
    half = len(text) // 2
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text[:half])
        handle.flush()
        os.fsync(handle.fileno())
        time.sleep(0.05)  # part of the scenario (a slow writer), not a wait for the service
        handle.write(text[half:])


def replace_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def assert_quiet(server: Server, trigger: str, expected: int, *, period: float = 1.5) -> None:
    """No further operation of ``trigger`` appears for ``period`` (polling, so an extra one fails fast)."""
    deadline = time.monotonic() + period
    while time.monotonic() < deadline:
        assert server.count(trigger) == expected, server.operations(trigger)
        time.sleep(0.1)


def log_of(server: Server) -> str:
    return server.output.read_text(errors="replace")


@contextmanager
def rename_events_table(database: Path, name: str, away: str) -> Iterator[None]:
    """Make the log unreachable for the running server (its events table is gone) until the block ends."""
    connection = sqlite3.connect(database, timeout=10)
    try:
        connection.execute(f"ALTER TABLE {name} RENAME TO {away}")
        connection.commit()
        yield
    finally:
        connection.execute(f"ALTER TABLE {away} RENAME TO {name}")
        connection.commit()
        connection.close()


def snapshot(server: Server) -> dict[str, Any]:
    """What must survive a restart: history (ids and outcomes), stats, backups, current hash."""
    history = server.get("/history", limit=100)
    stats = server.get("/stats")
    return {
        "history": [
            (op["operation_id"], op["trigger"], op["status"], op["new_config_hash"])
            for op in history["operations"]
        ],
        "total_count": history["total_count"],
        "stats": {
            key: stats[key] for key in ("total_operations", "successful_operations", "failed_operations")
        },
        "success_rate": stats["success_rate"],
        "average_duration_ms": stats["average_duration_ms"],
        "backups": server.get("/backups"),
        "current": server.get("/current")["full_hash"],
    }


def test_serve_handles_sighup_file_changes_sigterm_and_restarts_with_history_intact(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    port = free_port()

    with confledger_serve(tmp_path, config, port, run=1) as server:
        status = server.get("/status")
        assert status["signal_handler_enabled"] is True
        assert status["file_watching_enabled"] is False  # off by default, as in the seed
        assert (tmp_path / "confledger.db").exists()  # the default log: SQLite next to the config
        initial = server.get("/current")["full_hash"]
        keys = keys_beside(tmp_path / "confledger.db")
        assert initial == full_hash_of(yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8")), keys)

        # SIGHUP: one signal-triggered operation, recorded with the signal as its actor.
        server.process.send_signal(signal.SIGHUP)
        wait_for("a signal-triggered operation", lambda: server.count("signal") == 1 or None)
        [by_signal] = server.operations("signal")
        assert by_signal["actor"] == "signal"
        assert by_signal["success"] is True

        # A burst of signals while reloads run coalesces: at most two more reloads, never one per signal.
        for _ in range(10):
            server.process.send_signal(signal.SIGHUP)
        wait_for("the burst's reload", lambda: server.count("signal") >= 2 or None)
        wait_for("the burst to settle", lambda: server.get("/status")["running_operation_id"] is None or None)
        after_burst = server.count("signal")
        assert 2 <= after_burst <= 3
        assert_quiet(server, "signal", after_burst, period=0.5)

        enabled = server.post("/file-watch/enable")
        assert enabled["file_watching_enabled"] is True
        assert enabled["config_source"] == str(config)  # the name as given, not its target
        assert enabled["poll_interval_seconds"] == 1.0

        # Every version written; a hash applied by the watcher must be one of these, never a partial file.
        atomic_body = variant(database__pool_size=51)
        in_place_body = variant(database__pool_size=52, cache__ttl_seconds=120)
        complete = {full_hash_of(atomic_body, keys)[:16], full_hash_of(in_place_body, keys)[:16]}

        replace_atomically(config, yaml.safe_dump(atomic_body, sort_keys=False))
        wait_for("the reload of the atomic replace", lambda: server.count("file_watch") == 1 or None)
        assert_quiet(server, "file_watch", 1)
        assert server.get("/current")["full_hash"] == full_hash_of(atomic_body, keys)

        write_in_place_slowly(config, yaml.safe_dump(in_place_body, sort_keys=False))
        wait_for("the reload of the in-place write", lambda: server.count("file_watch") == 2 or None)
        assert_quiet(server, "file_watch", 2)
        assert server.get("/current")["full_hash"] == full_hash_of(in_place_body, keys)

        # A symlink swap (how Kubernetes updates a mounted ConfigMap): config.yaml becomes a link to a
        # versioned file, then the link is replaced to point at the next version.
        swapped_bodies = [variant(database__pool_size=53), variant(database__pool_size=54)]
        for number, body in enumerate(swapped_bodies, start=3):
            version_dir = tmp_path / f"v{number}"
            version_dir.mkdir()
            (version_dir / "config.yaml").write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
            link = tmp_path / ".config.yaml.link"
            link.symlink_to(version_dir / "config.yaml")
            os.replace(link, config)
            wait_for(
                f"the reload of symlink swap {number}",
                lambda n=number: server.count("file_watch") == n or None,
            )
            assert_quiet(server, "file_watch", number)
            assert server.get("/current")["full_hash"] == full_hash_of(body, keys)
        complete |= {full_hash_of(body, keys)[:16] for body in swapped_bodies}

        watched = server.operations("file_watch")
        assert [op["new_config_hash"] for op in reversed(watched)] == [
            full_hash_of(body, keys)[:16] for body in [atomic_body, in_place_body, *swapped_bodies]
        ]
        for op in watched:
            assert op["success"] is True, op
            assert op["actor"] == "file_watch"
            types = [event["type"] for event in server.get(f"/operations/{op['operation_id']}")["events"]]
            assert "config.load_failed" not in types
            assert "validation.failed" not in types
        # No partial file was ever even loaded: every config.loaded hash in the log is a complete version.
        loaded = [e for e in server.get("/events", limit=1000)["events"] if e["type"] == "config.loaded"]
        assert {e["payload"]["hash"][:16] for e in loaded} <= complete | {initial[:16]}

        before_restart = snapshot(server)
        # start-up, the signals, four file changes
        assert before_restart["stats"]["total_operations"] == 1 + after_burst + 4
        assert len(before_restart["backups"]["backups"]) == 4
        stop(server)

    with confledger_serve(tmp_path, config, port, run=2) as restarted:
        after_restart = snapshot(restarted)
        assert after_restart == before_restart
        lifecycle = [
            e["type"] for e in restarted.get("/events", limit=1000)["events"] if e["operation_id"] is None
        ]
        # ... and the restored config answered for the fleet view (instance.applied, role start).
        assert lifecycle[-3:] == ["instance.stopped", "instance.started", "instance.applied"]
        # --watch is off; enabling it was a run-time choice of the first run
        assert restarted.get("/status")["file_watching_enabled"] is False

        # A SIGHUP while the log is unreachable fails that reload, not the process; the next one works.
        signals = restarted.count("signal")
        with rename_events_table(tmp_path / "confledger.db", "events", "events_away"):
            restarted.process.send_signal(signal.SIGHUP)
            wait_for(
                "the failed reload to be logged",
                lambda: "reload on SIGHUP failed" in log_of(restarted) or None,
            )
            assert restarted.process.poll() is None
        restarted.process.send_signal(signal.SIGHUP)
        wait_for("the next SIGHUP's reload", lambda: restarted.count("signal") == signals + 1 or None)
        stop(restarted)

    for run in (1, 2):
        printed = (tmp_path / f"serve-{run}.log").read_text(errors="replace")
        for secret in (ADMIN_TOKEN, OPENAI_KEY, FIRECRAWL_KEY):
            assert secret not in printed


@pytest.mark.parametrize(
    ("arguments", "variables", "served"),
    [
        # on by default in `confledger serve`
        ((), {}, True),
        # off by the flag, or by the variable
        (("--no-metrics",), {}, False),
        ((), {"CONFLEDGER_METRICS": "false"}, False),
    ],
)
def test_serve_exposes_metrics_by_default_behind_a_token_and_not_when_turned_off(
    tmp_path: Path, arguments: tuple[str, ...], variables: dict[str, str], served: bool
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    with confledger_serve(
        tmp_path, config, free_port(), 1, arguments=arguments, variables=variables
    ) as server:
        scraped = server.client.get("/metrics")
        if not served:
            assert scraped.status_code == 404
            return
        assert scraped.status_code == 200
        assert "config_operations_total" in scraped.text
        anonymous = httpx.get(server.client.base_url.join("/metrics"), timeout=10)
        assert anonymous.status_code == 401
        stop(server)


def test_with_json_logs_every_log_line_is_one_json_object_uvicorn_s_included(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    with confledger_serve(tmp_path, config, free_port(), 1, arguments=("--log-format", "json")) as server:
        assert server.client.get("/healthz").status_code == 200
        assert server.client.post("/api/v1/config/reload", json={"force": True}).status_code == 200
        stop(server)
    lines = [line for line in server.output.read_text(errors="replace").splitlines() if line.strip()]
    # Every line is a log line (the token comes from the environment: serve prints nothing of its own).
    logged = [json.loads(line) for line in lines]
    loggers = {entry["logger"] for entry in logged}
    assert {"uvicorn.access", "uvicorn.error", "confledger.store.operations"} <= loggers
    assert any("GET /healthz" in entry["message"] for entry in logged if entry["logger"] == "uvicorn.access")


def _read_terminal(leader: int) -> bytes:
    """Everything written to a pseudo-terminal until its last writer closed it (Linux says EIO then)."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# (where serve's output goes, whether the admin token it generates is printed there)
TOKEN_OUTPUTS = [
    # the terminal of the operator who started it: shown this once, with the file that keeps it
    ("terminal", True),
    # a file, as under systemd's journal, a container's log or nohup: only the file that keeps it
    ("file", False),
]


@pytest.mark.parametrize(("destination", "shown"), TOKEN_OUTPUTS)
def test_a_generated_admin_token_is_printed_to_a_terminal_only(
    tmp_path: Path, destination: str, shown: bool
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    token_file = tmp_path / "confledger.db.admin-token"
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CONFLEDGER_")}
    environment.pop("FORCE_COLOR", None)
    command = [str(CONFLEDGER), "serve", "--config", str(config), "--port", str(port)]
    command += ["--model", "confledger.examples.app_config:AppConfig"]
    leader, follower = os.openpty() if destination == "terminal" else (-1, -1)
    log_file = tmp_path / "serve.log"
    with log_file.open("wb") as sink:
        stream: int | Any = follower if destination == "terminal" else sink
        process = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=stream, stderr=stream)
    if destination == "terminal":
        os.close(follower)  # the child holds the only writer: reading ends when it exits
    try:

        def ready() -> bool | None:
            assert process.poll() is None, "confledger serve exited early"
            if not token_file.exists():
                return None
            token = token_file.read_text(encoding="utf-8").strip()
            headers = {"Authorization": f"Bearer {token}"}
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}{PREFIX}/status", headers=headers, timeout=5)
            except httpx.TransportError:
                return None
            return True if answer.status_code == 200 else None

        wait_for("the service with its generated token", ready, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    printed = (_read_terminal(leader) if destination == "terminal" else log_file.read_bytes()).decode()
    if destination == "terminal":
        os.close(leader)
    token = token_file.read_text(encoding="utf-8").strip()
    assert (token in printed) is shown, printed
    assert str(token_file) in printed  # where it is, either way


def test_a_setting_given_as_an_option_wins_over_its_variable(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    with confledger_serve(
        tmp_path,
        config,
        free_port(),
        1,
        arguments=["--backup-count", "2", "--no-docs"],
        variables={"CONFLEDGER_BACKUP_COUNT": "9", "CONFLEDGER_HISTORY_WINDOW": "7"},
    ) as server:
        assert server.get("/backups")["max_backups"] == 2  # the option, not the variable's 9
        assert server.client.get("/docs").status_code == 404
        assert server.client.get("/openapi.json").status_code == 404
        stop(server)


def test_serve_says_where_it_listens_and_names_a_misspelt_variable(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    port = free_port()
    with confledger_serve(tmp_path, config, port, 1, variables={"CONFLEDGER_BACKUP_COUNTS": "9"}) as server:
        assert server.get("/backups")["max_backups"] == 5  # the misspelt variable set nothing
        stop(server)
    printed = server.output.read_text(errors="replace")
    assert f"listening on http://127.0.0.1:{port} (Ctrl-C stops)" in printed
    assert (
        "warning: CONFLEDGER_BACKUP_COUNTS is not a confledger setting and is ignored "
        "(did you mean CONFLEDGER_BACKUP_COUNT?)"
    ) in printed


def test_a_forwarded_for_header_cannot_write_escape_sequences_into_the_audit_or_access_log(
    tmp_path: Path,
) -> None:
    # uvicorn believes X-Forwarded-For on a connection from 127.0.0.1 (its FORWARDED_ALLOW_IPS default),
    # so this client names its own address: text, not an address, is kept escaped.
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    forged = "\x1b]0;owned\x07\x1b[31mEVIL"
    with confledger_serve(tmp_path, config, free_port(), 1) as server:
        answer = server.client.post(
            PREFIX + "/reload", json={"force": True}, headers={"X-Forwarded-For": f"203.0.113.9, {forged}"}
        )
        assert answer.status_code == 200, answer.text
        honest = server.client.post(PREFIX + "/reload", json={"force": True})
        assert honest.status_code == 200, honest.text
        stop(server)
    with sqlite3.connect(tmp_path / "confledger.db") as database:
        recorded = [
            row[0]
            for row in database.execute(
                "SELECT json_extract(payload, '$.client') FROM events "
                "WHERE type = 'operation.started' ORDER BY position DESC LIMIT 2"
            )
        ]
    assert recorded == ["127.0.0.1", "unreadable:" + ascii(forged)]
    printed = log_of(server)
    assert "\x1b" not in printed
    assert "\x07" not in printed
    assert "EVIL" in printed  # the line is there, escaped
