"""Registered service callbacks: order, registration, and the four outcomes of one notification."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from opentelemetry import trace

from confledger.store import ServiceOutcome
from confledger.store.calls import UserCalls
from confledger.store.services import NotifyResult, ServiceRegistry, notify_services

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def noop(old: Any, new: Any) -> bool:
    return True


# --- registration and order ----------------------------------------------------------------------------


def test_order_is_priority_high_first_then_registration_order() -> None:
    registry = ServiceRegistry()
    # (name, priority), in registration order
    for name, priority in [("c", 0), ("a", 10), ("b", 10), ("d", -5), ("e", 0)]:
        registry.register(name, noop, priority=priority)
    assert registry.names() == ["a", "b", "c", "e", "d"]
    assert [spec.priority for spec in registry.ordered()] == [10, 10, 0, 0, -5]


def test_registering_a_name_again_replaces_it_and_moves_it_behind_its_peers() -> None:
    registry = ServiceRegistry()
    registry.register("a", noop)
    registry.register("b", noop)
    replacement = registry.register("a", lambda old, new: False, timeout=3.0)
    assert registry.ordered()[0].timeout is None  # the runner's callback timeout applies
    assert len(registry) == 2
    assert registry.names() == ["b", "a"]
    assert registry.ordered()[-1] is replacement
    assert replacement.timeout == 3.0


def test_unregister_removes_by_name() -> None:
    registry = ServiceRegistry()
    registry.register("a", noop)
    assert "a" in registry
    assert registry.unregister("a") is True
    assert "a" not in registry
    assert registry.unregister("a") is False
    assert registry.names() == []


@pytest.mark.parametrize(
    ("name", "timeout", "message"),
    [
        ("", 1.0, "a service needs a name"),  # empty
        ("   ", 1.0, "a service needs a name"),  # blank
        ("svc", 0.0, "timeout must be positive"),  # zero timeout
        ("svc", -1.0, "timeout must be positive"),  # negative timeout
    ],
)
def test_bad_registrations_are_refused(name: str, timeout: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServiceRegistry().register(name, noop, timeout=timeout)


def test_coroutine_functions_are_async_callbacks_without_saying_so() -> None:
    async def handler(old: Any, new: Any) -> bool:
        return True

    registry = ServiceRegistry()
    assert registry.register("async", handler).async_callback is True
    assert registry.register("sync", noop).async_callback is False
    assert registry.register("declared", noop, async_callback=True).async_callback is True


def test_a_result_labels_itself_as_the_seed_did() -> None:
    assert NotifyResult("cache", 5, ServiceOutcome.TIMEOUT, 1.0).label == "cache:timeout"


# --- notifying ---------------------------------------------------------------------------------------


async def notify(
    callback: Any,
    *,
    timeout: float | None = None,
    async_callback: bool = False,
    calls: UserCalls | None = None,
    **kwargs: Any,
) -> NotifyResult:
    registry = ServiceRegistry()
    spec = registry.register("svc", callback, priority=7, timeout=timeout, async_callback=async_callback)
    [result] = await notify_services(
        [spec],
        "old",
        "new",
        calls=calls or UserCalls(4),
        default_timeout=5.0,
        tracer=trace.NoOpTracer(),
        **kwargs,
    )
    return result


async def async_true(old: Any, new: Any) -> bool:
    await anyio.sleep(0)
    return True


async def async_false(old: Any, new: Any) -> bool:
    return False


async def async_raises(old: Any, new: Any) -> bool:
    raise ConnectionError("pool closed")


@pytest.mark.parametrize(
    ("callback", "outcome", "error"),
    [
        (lambda old, new: True, ServiceOutcome.SUCCESS, None),  # True accepts
        (lambda old, new: None, ServiceOutcome.SUCCESS, None),  # returning nothing accepts too
        (lambda old, new: 0, ServiceOutcome.SUCCESS, None),  # only an explicit False refuses
        (lambda old, new: False, ServiceOutcome.FAILED, "callback returned False"),
        (lambda old, new: {}["missing"], ServiceOutcome.ERROR, "KeyError: 'missing'"),  # raised
        (async_true, ServiceOutcome.SUCCESS, None),  # async: accepts
        (async_false, ServiceOutcome.FAILED, "callback returned False"),  # async: refuses
        (async_raises, ServiceOutcome.ERROR, "ConnectionError: pool closed"),  # async: raised
    ],
)
async def test_outcomes(callback: Any, outcome: ServiceOutcome, error: str | None) -> None:
    result = await notify(callback)
    assert (result.service, result.priority) == ("svc", 7)
    assert result.outcome is outcome
    assert result.error == error
    assert result.duration_ms > 0


async def test_callbacks_get_old_then_new() -> None:
    seen: list[tuple[Any, Any]] = []
    await notify(lambda old, new: seen.append((old, new)))
    assert seen == [("old", "new")]


async def test_sync_callbacks_run_off_the_event_loop_thread() -> None:
    threads: list[int] = []
    await notify(lambda old, new: threads.append(threading.get_ident()))
    assert threads
    assert threads[0] != threading.get_ident()


@pytest.mark.parametrize(
    "asynchronous",
    [
        False,  # a sync callback: its thread is abandoned at the deadline
        True,  # an async callback: cancelled at the deadline
    ],
)
async def test_a_callback_past_its_timeout_is_a_timeout(asynchronous: bool) -> None:
    release = threading.Event()

    def slow_sync(old: Any, new: Any) -> bool:
        release.wait(10)
        return True

    async def slow_async(old: Any, new: Any) -> bool:
        await anyio.sleep(10)
        return True

    try:
        result = await notify(slow_async if asynchronous else slow_sync, timeout=0.05)
    finally:
        release.set()
    assert result.outcome is ServiceOutcome.TIMEOUT
    assert result.error == "no answer within 0.05s"
    assert result.duration_ms > 0


@pytest.mark.parametrize(
    "asynchronous",
    [
        False,  # raised in a worker thread
        True,  # raised on the loop
    ],
)
async def test_a_timeout_error_the_callback_raises_itself_is_an_error(asynchronous: bool) -> None:
    def sync_raises(old: Any, new: Any) -> bool:
        raise TimeoutError("database did not answer")

    async def async_raises_timeout(old: Any, new: Any) -> bool:
        raise TimeoutError("database did not answer")

    result = await notify(async_raises_timeout if asynchronous else sync_raises, timeout=30)
    assert result.outcome is ServiceOutcome.ERROR
    assert result.error == "TimeoutError: database did not answer"


async def test_a_sync_callable_returning_a_coroutine_has_it_awaited() -> None:
    done: list[str] = []

    async def update(new: Any) -> bool:
        done.append(new)
        return False

    result = await notify(lambda old, new: update(new))
    assert done == ["new"]
    assert result.outcome is ServiceOutcome.FAILED


async def test_async_callback_flag_accepts_a_sync_function() -> None:
    # The seed's async_callback=True with a plain function: its plain result is used as is.
    result = await notify(lambda old, new: False, async_callback=True)
    assert result.outcome is ServiceOutcome.FAILED


async def test_error_text_has_secrets_scrubbed_and_is_bounded() -> None:
    secret = "sk-live-0000-very-secret"

    def leaky(old: Any, new: Any) -> bool:
        raise RuntimeError(f"auth failed for {secret}: " + "x" * 2000)

    result = await notify(leaky, secret_values=[secret])
    assert result.outcome is ServiceOutcome.ERROR
    assert result.error is not None
    assert secret not in result.error
    assert result.error.startswith("RuntimeError: auth failed for **********: xxx")
    assert len(result.error) <= 500


async def test_a_registration_without_a_timeout_gets_the_default_one() -> None:
    release = threading.Event()
    try:
        registry = ServiceRegistry()
        spec = registry.register("svc", lambda old, new: release.wait(10))
        [result] = await notify_services(
            [spec], "old", "new", calls=UserCalls(2), default_timeout=0.05, tracer=trace.NoOpTracer()
        )
    finally:
        release.set()
    assert result.outcome is ServiceOutcome.TIMEOUT
    assert result.error == "no answer within 0.05s"


async def test_a_callback_still_running_past_its_timeout_is_not_called_again() -> None:
    # Each reload would otherwise park one more thread in the same hung callback.
    release = threading.Event()
    entered: list[int] = []

    def hangs(old: Any, new: Any) -> bool:
        entered.append(threading.get_ident())
        release.wait(60)
        return True

    calls = UserCalls(2)
    try:
        # A call given up before a worker thread started it never runs (a loaded machine can take longer
        # than the timeout to start one): notified again, with twice the time, until it hangs in a thread.
        timeout = 0.05
        with anyio.fail_after(60):
            first = await notify(hangs, timeout=timeout, calls=calls)
            while "service:svc" not in calls.in_flight():
                timeout *= 2
                first = await notify(hangs, timeout=timeout, calls=calls)
        second = await notify(hangs, timeout=0.05, calls=calls)
        assert calls.in_flight() == {"service:svc"}
    finally:
        release.set()
    assert first.outcome is ServiceOutcome.TIMEOUT
    assert second.outcome is ServiceOutcome.ERROR
    assert second.error == "not called: its previous call overran its timeout and is still running"
    assert len(entered) == 1
    # Once the abandoned call returns, the service is called again.
    with anyio.fail_after(5):
        while calls.in_flight():
            await anyio.sleep(0.01)
    assert (await notify(lambda old, new: True, calls=calls)).outcome is ServiceOutcome.SUCCESS
