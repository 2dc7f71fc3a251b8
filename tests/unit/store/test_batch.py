"""store.batch: several sync calls in one worker-thread hop, each under its own deadline."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from confledger import store
from confledger.store.batch import CallOutcome, SyncCall, run_in_worker

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_calls_run_in_order_in_one_worker_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int]] = []

    def record(name: str) -> SyncCall:
        return SyncCall(lambda: seen.append((name, threading.get_ident())) or name)

    outcomes = await run_in_worker([record("a"), record("b"), record("c")])

    assert [o.value for o in outcomes] == ["a", "b", "c"]
    assert [name for name, _ in seen] == ["a", "b", "c"]
    threads = {ident for _, ident in seen}
    assert len(threads) == 1
    assert loop_thread not in threads
    assert all(o.duration_ms >= 0 and not o.timed_out and o.error is None for o in outcomes)


async def test_an_error_is_an_outcome_and_the_next_call_still_runs() -> None:
    def boom() -> None:
        raise ValueError("no")

    outcomes = await run_in_worker([SyncCall(boom), SyncCall(lambda: 2)])

    assert isinstance(outcomes[0].error, ValueError)
    assert outcomes[1].value == 2


async def test_stop_on_error_leaves_the_rest_unrun() -> None:
    ran: list[str] = []

    def boom() -> None:
        raise OSError("disk")

    outcomes = await run_in_worker(
        [SyncCall(boom, stop_on_error=True), SyncCall(lambda: ran.append("after"))]
    )

    assert len(outcomes) == 1
    assert isinstance(outcomes[0].error, OSError)
    assert ran == []


async def test_a_hung_call_times_out_and_the_calls_after_it_run_in_a_fresh_thread() -> None:
    release = threading.Event()
    idents: dict[str, int] = {}

    def hang() -> str:
        idents["hang"] = threading.get_ident()
        release.wait(10)
        return "late"

    def after() -> str:
        idents["after"] = threading.get_ident()
        return "ran"

    try:
        outcomes = await run_in_worker([SyncCall(hang, timeout=0.1), SyncCall(after, timeout=5)])
    finally:
        release.set()

    assert outcomes[0].timed_out
    assert outcomes[0].value is None
    assert outcomes[0].duration_ms >= 100
    assert outcomes[1].value == "ran"
    assert not outcomes[1].timed_out
    assert idents["after"] != idents["hang"]


async def test_each_deadline_counts_from_when_its_call_starts() -> None:
    # The first call alone outlasts the second's timeout: were deadlines counted from the batch's start,
    # the second call would be reported as timed out although it took a fraction of its allowance.
    outcomes = await run_in_worker(
        [
            SyncCall(lambda: time.sleep(0.4) or "slow", timeout=5),
            SyncCall(lambda: time.sleep(0.02) or "quick", timeout=0.3),
        ]
    )

    assert [o.value for o in outcomes] == ["slow", "quick"]
    assert not any(o.timed_out for o in outcomes)


async def test_a_call_without_timeout_may_take_as_long_as_it_needs() -> None:
    outcomes = await run_in_worker(
        [SyncCall(lambda: time.sleep(0.3) or "store"), SyncCall(lambda: "user", timeout=0.1)]
    )

    assert [o.value for o in outcomes] == ["store", "user"]


async def test_cancelling_the_caller_runs_nothing_more() -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def first() -> None:
        started.set()
        release.wait(10)

    with anyio.move_on_after(0.1):
        await run_in_worker([SyncCall(first), SyncCall(lambda: ran.append("second"))])
    release.set()
    await anyio.sleep(0.1)

    assert started.is_set()
    assert ran == []


# --- the worker pool -----------------------------------------------------------------------------------


async def test_consecutive_hops_reuse_one_idle_thread() -> None:
    threads = set()
    for _ in range(20):
        await run_in_worker([SyncCall(lambda: threads.add(threading.get_ident()))])

    assert len(threads) == 1


async def test_a_hung_call_keeps_its_thread_and_the_next_hop_gets_another() -> None:
    release = threading.Event()
    hung: list[int] = []

    def hang() -> None:
        hung.append(threading.get_ident())
        release.wait(10)

    try:
        [timed_out] = await run_in_worker([SyncCall(hang, timeout=0.05)])
        [after] = await run_in_worker([SyncCall(threading.get_ident)])
    finally:
        release.set()

    assert timed_out.timed_out
    assert after.value != hung[0]


async def test_idle_threads_retire_and_a_new_one_serves_the_next_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.batch, "_IDLE_SECONDS", 0.05)
    pool = store.batch._WorkerPool()
    monkeypatch.setattr(store.batch, "_pool", pool)

    [first] = await run_in_worker([SyncCall(threading.get_ident)])
    await anyio.sleep(0.3)  # several idle timeouts: the thread has left the pool and ended
    assert pool._idle == []
    assert first.value not in {thread.ident for thread in threading.enumerate()}

    [second] = await run_in_worker([SyncCall(lambda: "served")])
    assert second.value == "served"


async def test_what_a_hop_function_raises_reaches_the_caller_and_the_thread_lives_on() -> None:
    def broken() -> None:
        raise KeyError("inside the hop itself")

    with pytest.raises(KeyError):
        await store.batch._hop(broken, 5.0)
    [after] = await run_in_worker([SyncCall(lambda: "still serving")])

    assert after.value == "still serving"


# --- spans ---------------------------------------------------------------------------------------------


@pytest.fixture
def tracing() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def traced(tracer: trace.Tracer, name: str, function: object, timeout: float | None = None) -> SyncCall:
    def finish(span: trace.Span, outcome: CallOutcome) -> None:
        span.set_attribute("timed_out", outcome.timed_out)

    return SyncCall(
        function,  # type: ignore[arg-type]
        timeout=timeout,
        start_span=lambda: tracer.start_span(name),
        finish_span=finish,
    )


async def test_each_call_has_its_span_and_user_spans_nest_under_it(
    tracing: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = tracing

    def user_code() -> None:
        with tracer.start_as_current_span("inside"):
            pass

    with tracer.start_as_current_span("operation"):
        await run_in_worker([traced(tracer, "one", user_code), traced(tracer, "two", lambda: None)])

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"operation", "one", "two", "inside"}
    parents = {name: span.parent.span_id for name, span in spans.items() if span.parent is not None}
    assert parents == {
        "one": spans["operation"].context.span_id,
        "two": spans["operation"].context.span_id,
        "inside": spans["one"].context.span_id,
    }


async def test_a_timed_out_call_span_is_ended_once_at_the_deadline(
    tracing: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = tracing
    release = threading.Event()

    outcomes = await run_in_worker([traced(tracer, "hung", lambda: release.wait(10), timeout=0.1)])
    ended_at_deadline = [s.name for s in exporter.get_finished_spans()]
    release.set()
    await anyio.sleep(0.1)  # the abandoned thread returns now: it must not end the span again

    assert outcomes[0].timed_out
    assert ended_at_deadline == ["hung"]
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes or {})["timed_out"] is True
