"""The app the zero-downtime row loads: a FastAPI service embedding confledger as a user would.

    BENCH_ZD_CONFIG=config.json BENCH_ZD_DATABASE=sqlite:///log.db \\
        python -m uvicorn tests.benchmarks.zero_downtime_app:app --port 8000

``POST /bench/changes`` (admin token) with ``{"rate": 20}`` starts changing the config that many times a
second, in this process (write the next version's file, then ``reload_config``), and ``{"rate": 0}``
stops it and answers what was done: the reloads, the failures, and each version's hash as the reload
announced it. In-process, because 20 POST /reload a second from outside could not keep the pace: each
reply would queue behind the 32 wrk connections, and a second reload sent meanwhile answers 409.

Every request to ``GET /work`` reads the config once through ``CurrentConfigDep`` and answers with what
that one object holds: its ``version``, its confledger hash (computed from the object, as the log computes
it) and ``derived``, the sum of all 64 values, so a config assembled from two versions would show as a sum
no single version has (``tests/benchmarks/zero_downtime.lua`` checks every response).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from confledger import CurrentConfigDep, setup_configuration_lifecycle
from confledger.api.deps import AdminCaller
from confledger.store import Trigger
from confledger.store.validation import dump_revealed
from tests.benchmarks.bench_zero_downtime import BenchConfig, body_of
from tests.benchmarks.common import TOKEN

__all__ = ["app", "lifecycle"]

SHORT_HASH = 16  # as the API shows a hash (``api.schemas.SHORT``)


app = FastAPI(title="confledger zero-downtime benchmark")
lifecycle = setup_configuration_lifecycle(
    app,
    config_model=BenchConfig,
    config_source=os.environ.get("BENCH_ZD_CONFIG"),
    database_url=os.environ.get("BENCH_ZD_DATABASE"),
    admin_token=TOKEN,
    enable_file_watching=False,
    enable_signal_handler=False,
    sqlite_synchronous="FULL",
)


def hash_of(config: BenchConfig) -> str:
    """The config's hash as its log computes it (the log's hash scheme, keyed digests for secrets)."""
    assert lifecycle.reloader is not None
    return lifecycle.reloader.log.hash_config(dump_revealed(config))[:SHORT_HASH]


@app.get("/work")
async def work(config: CurrentConfigDep) -> dict[str, Any]:
    version = config.version
    await anyio.sleep(0)  # let a reload land mid-request: the one object read must still be whole
    return {
        "version": version,
        "hash": hash_of(config),
        "derived": sum(config.values.values()),
    }


class Changes(BaseModel):
    rate: float


class Changer:
    """Changes the config ``rate`` times a second until stopped; what it did, for the driver to check."""

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.done = anyio.Event()
        self.version = 0
        self.reloads = 0
        self.failures = 0
        self.announced: dict[int, str] = {}
        self.reload_ms: list[float] = []

    async def run(self, rate: float) -> None:
        reloader = lifecycle.reloader
        assert reloader is not None
        source = Path(os.environ["BENCH_ZD_CONFIG"])
        spare = source.with_name(source.name + ".new")
        interval = 1.0 / rate
        next_at = anyio.current_time()
        try:
            with anyio.CancelScope() as self.scope:
                while True:
                    self.version += 1
                    # Written aside and renamed over, as deploy tools do.
                    spare.write_text(json.dumps(body_of(self.version)), encoding="utf-8")
                    spare.replace(source)
                    started = anyio.current_time()
                    operation = await reloader.reload_config(Trigger.API)
                    self.reload_ms.append((anyio.current_time() - started) * 1000)
                    self.reloads += 1
                    if operation.success and operation.new_config_hash is not None:
                        self.announced[self.version] = operation.new_config_hash[:SHORT_HASH]
                    else:
                        self.failures += 1
                    next_at += interval
                    await anyio.sleep(max(0.0, next_at - anyio.current_time()))
        finally:
            self.done.set()


changer: Changer | None = None


@app.post("/bench/changes")
async def changes(request: Request, body: Changes, _caller: AdminCaller) -> dict[str, Any]:
    global changer
    if body.rate > 0:
        if changer is not None and not changer.done.is_set():
            raise HTTPException(409, "already changing")
        version = 0 if changer is None else changer.version
        changer = Changer()
        changer.version = version
        # A task of the server's loop (uvicorn runs asyncio), kept referenced until it ends.
        request.app.state.changer_task = asyncio.get_running_loop().create_task(changer.run(body.rate))
        return {"started": True}
    if changer is None:
        return {"reloads": 0, "failures": 0, "announced": {}, "reload_ms": []}
    if changer.scope is not None:
        changer.scope.cancel()
    await changer.done.wait()
    return {
        "reloads": changer.reloads,
        "failures": changer.failures,
        "announced": changer.announced,
        "reload_ms": changer.reload_ms,
    }
