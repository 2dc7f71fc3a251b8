"""A checkpoint is a cache: one whose state its projection cannot read is discarded with a warning, and the
projection folds from position 0, landing where a fold with no checkpoint at all lands.

Both ways in are checked, on both backends: the service's start and the CLI's offline reader
(``LogInspector.load``); both go through ``projections.runner.restore_projections``. Each projection gets
the damaged states of a table (the service being a whole ``ConfigReloader``), then states hypothesis
makes (the service being its ``ProjectionSet``): arbitrary JSON, and the projection's own state with one
value anywhere in it replaced by arbitrary JSON. Whatever the state, neither start fails, every read
answers, both read it alike, and a discarded checkpoint leaves the same projections as a fold from zero.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confledger.api.inspect import LogInspector
from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.projections.backups import BackupsProjection
from confledger.projections.base import Projection
from confledger.projections.current import CurrentProjection
from confledger.projections.fleet import FleetProjection
from confledger.projections.history import HistoryProjection
from confledger.projections.runner import ProjectionSet
from confledger.projections.stats import StatsProjection
from confledger.store import Checkpoint, EventLog, NewEvent, OperationKind, SecretCipher, Trigger
from confledger.store.canonical import canonical_json
from confledger.store.events import InstanceStarted, OperationStarted
from tests.benchmarks.logbuilder import build_log

pytestmark = pytest.mark.anyio

CIPHER = SecretCipher([SecretCipher.generate_key()])
NAMES = ("current", "history", "stats", "backups", "fleet")
VERSIONS = {
    kind.name: kind.version
    for kind in (CurrentProjection, HistoryProjection, StatsProjection, BackupsProjection, FleetProjection)
}
RUNNER_LOGGER = "confledger.projections.runner"
# The log discards a checkpoint whose MAC does not hold before the runner sees it, and says so itself.
LOG_LOGGER = "confledger.store.log"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Warnings(logging.Handler):
    """The runner's and the log's warnings, caught at their own loggers (the CLI's logging setup stops
    propagation)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    handler = Warnings()
    loggers = [logging.getLogger(name) for name in (RUNNER_LOGGER, LOG_LOGGER)]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def service_projections(log: EventLog) -> list[Projection]:
    """The service's five projections, its current config materialised from the stored body."""
    return [
        CurrentProjection(lambda full_hash: log.get_config(full_hash).body),
        HistoryProjection(window=200),
        StatsProjection(),
        BackupsProjection(5),
        FleetProjection(),
    ]


def states(projections: list[Projection]) -> dict[str, Any]:
    """Each projection's position and state, as a checkpoint would hold it (JSON text: comparable)."""
    for projection in projections:
        projection.settle()
    return {p.name: (p.position, canonical_json(p.snapshot())) for p in projections}


class Folded:
    """A log of six operations (one still running), and what folding it from zero gives."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        build_log(log, 40)
        log.append(
            [
                NewEvent(
                    OperationStarted(kind=OperationKind.RELOAD, trigger=Trigger.SIGNAL),
                    operation_id=uuid.uuid4(),
                )
            ]
        )
        projections = service_projections(log)
        ProjectionSet(log, projections).start()
        self.from_zero = states(projections)
        self.snapshots = {p.name: p.snapshot() for p in projections}

    def damage(self, name: str, state: Any) -> None:
        # At the head, of the projection's own version: read as it stands, it would leave nothing to fold.
        self.log.save_checkpoint(Checkpoint(name, VERSIONS[name], self.log.head(), state))

    def service_start(self) -> dict[str, Any]:
        projections = service_projections(self.log)
        ProjectionSet(self.log, projections).start()
        for projection in projections:
            read_everything(projection)
        return states(projections)

    def cli_load(self, url: str) -> dict[str, Any]:
        with LogInspector.open(url) as inspector:
            inspector.load()
            inspector.history_page(limit=50)
            inspector.stats_summary()
            inspector.status()
            return states(inspector.projections)


def read_everything(projection: Projection) -> None:
    """What readers ask of each projection; none of it may fail on a restored state."""
    canonical_json(projection.snapshot())
    if isinstance(projection, StatsProjection):
        projection.summary()
        projection.operations_by_kind_trigger_status()
        projection.errors_by_kind_reason()
        projection.drift(projection.current_hash)
    elif isinstance(projection, HistoryProjection):
        projection.recent()
    elif isinstance(projection, BackupsProjection):
        assert isinstance(projection.backups, list)
    elif isinstance(projection, CurrentProjection):
        assert projection.hash is None or isinstance(projection.hash, str)


@pytest.fixture
def folded(database_url: str) -> Iterator[Folded]:
    with EventLog(database_url, cipher=CIPHER, instance_id="builder") as log:
        yield Folded(log)


def with_value(state: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``state`` with the value at ``path`` replaced."""
    changed = copy.deepcopy(state)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


A_UUID = "0190a0b0-0000-7000-8000-000000000001"
Damage = Callable[[dict[str, Any]], Any]


def case(name: str, damage: Damage, what: str) -> Any:
    return pytest.param(name, damage, id=f"{name}: {what}")


# (projection, how its real state is damaged, what is then wrong with it). Every row must be discarded by
# both ways in.
DAMAGED = [
    *[case(name, lambda _: [], "a list, not an object") for name in NAMES],
    *[case(name, lambda _: "text", "a string, not an object") for name in NAMES],
    *[case(name, lambda _: None, "null") for name in NAMES],
    # backups
    case("backups", lambda _: {"entries": [{"nohash": 1}]}, "an entry without its hash (the issue's case)"),
    case("backups", lambda real: {**real, "entries": "abc"}, "entries not a list"),
    case("backups", lambda real: {**real, "triggers": {"x": "api"}}, "a running operation's id not a UUID"),
    case("backups", lambda real: with_value(real, ("entries", 0, "applied_at"), "noon"), "a time not ISO"),
    case("backups", lambda real: with_value(real, ("entries", 0, "position"), "7"), "a position as text"),
    # current
    case("current", lambda _: {"applied": 5}, "applied not an object"),
    case("current", lambda _: {}, "no applied at all"),
    case("current", lambda real: with_value(real, ("applied", "hash"), "abc"), "a hash that is none"),
    case("current", lambda real: with_value(real, ("applied", "position"), 7.5), "a position not whole"),
    case("current", lambda real: with_value(real, ("applied", "applied_at"), 17e8), "a time as a number"),
    # history
    case("history", lambda _: {"operations": [{"operation_id": 1}], "open": {}}, "an operation half there"),
    case("history", lambda real: {**real, "open": {A_UUID: []}}, "a running operation with no events"),
    case("history", lambda real: {**real, "open": {"x": [{}]}}, "a running operation's id not a UUID"),
    case("history", lambda real: with_value(real, ("operations", 0, "status"), "gone"), "no such status"),
    # stats
    case("stats", lambda _: {"total": 3}, "most fields missing"),
    case("stats", lambda real: {**real, "total": "3"}, "a count as text"),
    case("stats", lambda real: {**real, "errors": {"reload|x": "y"}}, "a counter that cannot count"),
    case("stats", lambda real: {**real, "by_trigger_status": {"api": 1}}, "a trigger|status key without |"),
    case("stats", lambda real: {**real, "services": {"cache": "ab"}}, "a service's outcomes not an object"),
    case(
        "stats", lambda real: with_value(real, ("durations", "buckets"), {"90000": 1}), "a bucket past floats"
    ),
    case(
        "stats",
        lambda real: with_value(real, ("durations", "buckets"), {"x": 1}),
        "a bucket index not a number",
    ),
    case("stats", lambda real: {**real, "open": {A_UUID: {"kind": "reload"}}}, "a start without its trigger"),
    # fleet
    case("fleet", lambda real: {**real, "instances": []}, "instances not an object"),
    case("fleet", lambda real: {**real, "instances": {"a": {"stopped": "no"}}}, "an instance half there"),
    case("fleet", lambda real: {**real, "desired_position": "7"}, "a position as text"),
]


@pytest.mark.parametrize(("name", "damage"), DAMAGED)
async def test_a_damaged_checkpoint_is_discarded_by_the_service_and_the_cli_alike(
    folded: Folded, database_url: str, warnings: Warnings, name: str, damage: Damage
) -> None:
    folded.damage(name, damage(folded.snapshots[name]))
    reloader = ConfigReloader(folded.log, config_model=AppConfig, validators=VALIDATORS, history_window=200)
    await reloader.start()
    try:
        service = states(reloader.projections.projections)
        assert reloader.current is not None
    finally:
        await reloader.stop()
    assert discarded(warnings, name) == 1

    # The service appended its instance events, and stopping checkpointed: damaged again for the CLI.
    folded.damage(name, damage(folded.snapshots[name]))
    cli = folded.cli_load(database_url)
    assert discarded(warnings, name) == 2

    head = folded.log.head()
    assert service == states(folded_from_zero(folded.log, until=next(iter(service.values()))[0]))
    assert cli == states(folded_from_zero(folded.log, until=head))


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_whose_stored_text_is_not_json_is_discarded_in_a_keyless_log(
    database_url: str, warnings: Warnings, name: str
) -> None:
    # Keyless, so no MAC catches it first (a keyed log reports it as changed: test_integrity.py).
    if database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's json type refuses text that is not JSON")
    with EventLog(database_url, instance_id="keyless") as log:
        for pid in range(3):
            log.append([NewEvent(InstanceStarted(version="0.1.0", host="h", pid=pid))])
        ProjectionSet(log, service_projections(log)).stop()  # stopping checkpoints every projection
        with log.engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE projection_checkpoints SET state = '{\"cut\": [1, 2' WHERE name = :name"),
                {"name": name},
            )
        projections = service_projections(log)
        ProjectionSet(log, projections).start()
        assert discarded(warnings, name) == 1
        assert any("not JSON" in message for message in warnings.messages)
        assert states(projections) == states(folded_from_zero(log, until=log.head()))


def discarded(warnings: Warnings, name: str) -> int:
    return sum(
        f"checkpoint {name!r}" in message and "cannot be read" in message for message in warnings.messages
    )


def folded_from_zero(log: EventLog, *, until: int) -> list[Projection]:
    """The service's projections folded from position 0 up to ``until``, no checkpoint consulted."""
    projections = service_projections(log)
    for event in log.iter_events(0, until=until):
        for projection in projections:
            projection.apply(event)
    return projections


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_past_the_head_is_not_trusted(
    folded: Folded, database_url: str, warnings: Warnings, name: str
) -> None:
    # A readable state, but from further along than this log reaches (a log cut short, another log's).
    folded.log.save_checkpoint(
        Checkpoint(name, VERSIONS[name], folded.log.head() + 5, folded.snapshots[name])
    )
    assert folded.service_start() == folded.cli_load(database_url) == folded.from_zero
    assert sum(f"checkpoint {name!r}" in m and "past the log's head" in m for m in warnings.messages) == 2


# --- any JSON at all --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def damaged_states(draw: st.DrawFn, real: dict[str, Any]) -> Any:
    """Arbitrary JSON, or ``real`` with the value at a path drawn through it replaced by arbitrary JSON."""
    if draw(st.booleans()):
        return draw(json_values)
    path: list[Any] = []
    node: Any = real
    while isinstance(node, dict | list) and node:
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
        if draw(st.booleans()):
            break
    if not path:
        return draw(json_values)
    return with_value(real, tuple(path), draw(json_values))


@pytest.mark.parametrize("name", NAMES)
@settings(
    max_examples=25,
    deadline=None,
    # One log per backend and projection; each example overwrites the one checkpoint it damages.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_checkpoint_state_leaves_both_starts_working(
    folded: Folded, database_url: str, warnings: Warnings, name: str, data: st.DataObject
) -> None:
    warnings.messages.clear()
    state = data.draw(damaged_states(folded.snapshots[name]), label="state")
    folded.damage(name, state)
    service = folded.service_start()
    cli = folded.cli_load(database_url)
    # Both ways in read a state alike: each discarded it (a warning apiece), or neither did.
    assert discarded(warnings, name) in (0, 2), warnings.messages
    if discarded(warnings, name):
        assert service == cli == folded.from_zero
    else:
        assert service == cli
