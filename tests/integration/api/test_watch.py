"""``GET /api/v1/config/watch``: applied changes as Server-Sent Events, on both backends.

The stream is read through Starlette's TestClient (it streams a response as the app sends it) from a
thread, while the test makes changes through the API; the end-on-shutdown test runs ``confledger serve``
as a real process, since only a real server stops while a client is still reading.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import AppConfig
from confledger.store import SecretCipher
from tests.integration.api.service_harness import (
    ADMIN_TOKEN,
    EXAMPLE_CONFIG,
    FIRECRAWL_KEY,
    OPENAI_KEY,
    PREFIX,
    READ_TOKEN,
    Service,
    clear_confledger_environment,
    serving,
    variant,
    write_config,
)
from tests.integration.api.test_serve_process import GRACEFUL_EXITS, confledger_serve, free_port, wait_for

NEW_OPENAI_KEY = "sk-rotated-4444-not-a-real-key-5555"
SECRETS = (OPENAI_KEY, NEW_OPENAI_KEY, FIRECRAWL_KEY, ADMIN_TOKEN, READ_TOKEN)


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)
    # A reading thread notices that its test is done at the next line: a keep-alive comment comes soon.
    monkeypatch.setenv("CONFLEDGER_WATCH_PING_INTERVAL", "0.2")


@dataclass
class Watcher:
    """A client reading the stream on a thread: parsed events in ``events``, every line in ``raw``."""

    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    raw: list[str] = field(default_factory=list)
    status: int | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    def next(self, timeout: float = 20.0) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def read(self, lines: Iterator[str]) -> None:
        """Parse ``text/event-stream`` lines: fields until a blank line make one event."""
        current: dict[str, Any] = {}
        try:
            for line in lines:
                self.raw.append(line)
                if line == "":
                    if "data" in current:
                        self.events.put({**current, "data": json.loads(current["data"])})
                    current = {}
                    continue
                name, _, value = line.partition(":")
                if name:
                    current[name] = value.removeprefix(" ")
        finally:
            self.ended.set()


@contextmanager
def watching(
    service: Service, *, token: str = READ_TOKEN, last_event_id: int | None = None
) -> Iterator[Watcher]:
    """A watch client on its own thread, subscribed (the feed counts it) before the block runs."""
    watcher = Watcher()
    stop = threading.Event()
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    subscribed_before = service.reloader.changes.watching

    def run() -> None:
        with service.client.stream("GET", PREFIX + "/watch", headers=headers) as response:
            watcher.status = response.status_code

            def lines() -> Iterator[str]:
                for line in response.iter_lines():
                    yield line
                    if stop.is_set():
                        return

            watcher.read(lines())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for("the client to subscribe", lambda: service.reloader.changes.watching > subscribed_before or None)
    try:
        yield watcher
    finally:
        stop.set()
        # The client leaves at its next line (a keep-alive comment at the latest).
        thread.join(timeout=30)


def change(service: Service, body: dict[str, Any]) -> dict[str, Any]:
    write_config(service.source, body)
    response = service.post("/reload", json={})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["success"] is True, answer
    return answer


def applied_positions(service: Service) -> list[int]:
    return [event.position for event in service.log.read(types=["config.applied"])]


# Three changes, the second of them a rotated secret (a path in the stream, never a value).
BODIES = [
    variant(database__pool_size=31),
    variant(database__pool_size=31, embedding__openai_api_key=NEW_OPENAI_KEY),
    variant(database__pool_size=33, embedding__openai_api_key=NEW_OPENAI_KEY),
]


def test_changes_arrive_in_order_and_a_reconnect_gets_every_later_change_once(
    tmp_path: Path, database_url: str
) -> None:
    with serving(tmp_path, database_url) as service:
        with watching(service) as live:
            answers = [change(service, body) for body in BODIES]
            received = [live.next() for _ in BODIES]
        assert live.status == 200

        positions = applied_positions(service)[-3:]
        assert [int(event["id"]) for event in received] == positions
        for event, answer in zip(received, answers, strict=True):
            assert event["event"] == "config.applied"
            data = event["data"]
            assert data["position"] == int(event["id"])
            assert data["hash"] == answer["new_config_hash"]
            assert data["previous_hash"] == answer["previous_config_hash"]
            assert data["changed_paths"] == answer["changes_applied"]
            assert data["actor"] == "token:admin"
            assert data["instance_id"] == service.log.instance_id
            assert data["changes_omitted"] == 0
        assert received[1]["data"]["changed_paths"] == ["embedding.openai_api_key"]
        assert [e["data"]["applied_at"] for e in received] == sorted(
            e["data"]["applied_at"] for e in received
        )
        # Written as every other answer writes a time (/history's completed_at, say): UTC, with Z.
        assert all(e["data"]["applied_at"].endswith("Z") for e in received)
        text = "\n".join(live.raw)
        for secret in SECRETS:
            assert secret not in text

        # Reconnecting after the first: the other two from the log, then the live feed, nothing twice.
        with watching(service, last_event_id=positions[0]) as resumed:
            replayed = [resumed.next() for _ in range(2)]
            assert [int(event["id"]) for event in replayed] == positions[1:]
            assert [event["data"] for event in replayed] == [event["data"] for event in received[1:]]
            fourth = change(
                service, variant(database__pool_size=34, embedding__openai_api_key=NEW_OPENAI_KEY)
            )
            following = resumed.next()
            assert int(following["id"]) == applied_positions(service)[-1]
            assert following["data"]["hash"] == fourth["new_config_hash"]
            assert resumed.events.empty()
        # From the start of the log: every applied change, the first load included.
        with watching(service, last_event_id=0) as from_zero:
            everything = [int(from_zero.next()["id"]) for _ in applied_positions(service)]
        assert everything == applied_positions(service)


def test_a_position_past_the_log_s_end_resumes_from_the_current_config(
    tmp_path: Path, database_url: str
) -> None:
    """After a restore from a backup the clients' positions lie past the log's end: they are told, sent
    the change that made the current config, and then every later one, rather than nothing for ever."""
    with serving(tmp_path, database_url) as service:
        current = change(service, BODIES[0])
        with watching(service, last_event_id=service.log.head() + 1000) as client:
            resent = client.next()
            assert int(resent["id"]) == applied_positions(service)[-1]
            assert resent["data"]["hash"] == current["new_config_hash"]
            later = change(service, BODIES[1])
            following = client.next()
            assert following["data"]["hash"] == later["new_config_hash"]
            assert client.events.empty()
        assert any(line.startswith(": reset: Last-Event-ID") for line in client.raw)


def test_a_change_another_instance_decided_arrives_through_the_follower(
    tmp_path: Path, database_url: str
) -> None:
    with serving(tmp_path, database_url) as service, watching(service) as live:
        # Another instance on the same log: the same key (PostgreSQL: the setting; SQLite: the key file).
        key = service.lifecycle.encryption_key
        other = ConfigReloader(
            database_url,
            config_model=AppConfig,
            config_source=service.source,
            instance_id="another-instance",
            cipher=None if key is None else SecretCipher.from_env_value(key),
        )

        async def decide() -> dict[str, Any]:
            async with other:
                write_config(service.source, variant(database__pool_size=41))
                operation = await other.reload_config()
                return {"hash": operation.new_config_hash, "success": operation.success}

        decided = anyio.run(decide)
        assert decided["success"] is True
        # No request and no append of this instance's own: its follower folds the other's change.
        event = live.next()
        assert event["data"]["instance_id"] == "another-instance"
        assert event["data"]["hash"] == decided["hash"][:16]
        assert live.events.empty()


def test_watch_needs_a_token_and_a_position(tmp_path: Path) -> None:
    with serving(tmp_path, f"sqlite:///{tmp_path / 'confledger.db'}") as service:
        refused = service.get("/watch", token=None)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        # Last-Event-ID must be a log position (each event's id is one).
        for bad in ("-1", "abc", "1.5"):
            answer = service.client.get(
                PREFIX + "/watch", headers={"Authorization": f"Bearer {READ_TOKEN}", "Last-Event-ID": bad}
            )
            assert answer.status_code == 422, bad
        assert service.reloader.changes.watching == 0


def test_a_full_instance_answers_503_until_a_stream_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONFLEDGER_WATCH_MAX_STREAMS", "1")
    with serving(tmp_path, f"sqlite:///{tmp_path / 'confledger.db'}") as service:
        with watching(service) as first:
            refused = service.get("/watch")
            assert refused.status_code == 503
            assert refused.json()["code"] == "watch_streams_full"
            assert refused.headers["retry-after"] == "2"
            assert wait_for("the first answer", lambda: first.status) == 200
            assert service.reloader.changes.watching == 1
        # The first client left: its place is free again.
        wait_for("the stream to close", lambda: service.reloader.changes.watching == 0 or None)
        with watching(service) as again:
            assert wait_for("the next answer", lambda: again.status) == 200


def test_an_idle_stream_carries_keep_alive_comments(tmp_path: Path) -> None:
    with serving(tmp_path, f"sqlite:///{tmp_path / 'confledger.db'}") as service, watching(service) as idle:
        wait_for("a keep-alive comment", lambda: any(line.startswith(":") for line in idle.raw) or None)
        assert idle.events.empty()


def test_the_stream_ends_cleanly_when_the_service_stops(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(EXAMPLE_CONFIG.read_bytes())
    port = free_port()
    with confledger_serve(tmp_path, config, port, run=1) as server:
        lines: list[str] = []
        ended = threading.Event()
        failure: list[BaseException] = []

        def read() -> None:
            try:
                with httpx.stream(
                    "GET",
                    f"http://127.0.0.1:{port}{PREFIX}/watch",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    timeout=30,
                ) as response:
                    lines.extend(response.iter_lines())
            except BaseException as exc:
                failure.append(exc)
            finally:
                ended.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for("the stream to open", lambda: '/watch HTTP/1.1" 200' in server.output.read_text() or None)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) in GRACEFUL_EXITS
        assert ended.wait(10)
        assert failure == []
        printed = server.output.read_text(errors="replace")
        assert "Application shutdown complete" in printed
        # The stream ended itself when the server began to stop; uvicorn did not have to cut it off.
        assert "timeout graceful shutdown exceeded" not in printed
