"""A small FastAPI service that embeds confledger the way a user would.

Run it on a directory of its own (its log and token file go beside its config)::

    confledger init embedded
    CONFLEDGER_CONFIG=embedded/config.yaml uvicorn confledger.examples.embedded_app:app --port 8001

It reads its config per request through the ``CurrentConfigDep`` dependency (one reference per request,
never a half-applied config) and registers two real callbacks: one resizes a connection pool, one clears
a response cache when the cache settings change. ``kill -HUP`` or ``POST /api/v1/config/reload`` reloads.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from confledger import CurrentConfigDep, register_config_callback, setup_configuration_lifecycle
from confledger.examples.app_config import VALIDATORS, AppConfig

__all__ = ["ConnectionPool", "ResponseCache", "app", "cache", "pool"]

HERE = Path(__file__).resolve().parent


class ConnectionPool:
    """Stands in for a database pool: resizing it is what a real pool's reconfigure would do."""

    def __init__(self, size: int = 10) -> None:
        self._lock = threading.Lock()
        self.size = size
        self.resizes = 0

    def resize(self, size: int) -> None:
        with self._lock:
            self.size = size
            self.resizes += 1


class ResponseCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[str, Any] = {}
        self.ttl_seconds = 3600
        self.clears = 0

    def get(self, key: str) -> Any:
        with self._lock:
            return self.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self.entries[key] = value

    def reconfigure(self, ttl_seconds: int) -> None:
        with self._lock:
            self.entries.clear()
            self.ttl_seconds = ttl_seconds
            self.clears += 1


pool = ConnectionPool()
cache = ResponseCache()


def resize_pool(old: AppConfig | None, new: AppConfig) -> bool:
    """Runs in a worker thread (sync callback): resize only when the pool settings changed."""
    if old is not None and old.database.pool_size == new.database.pool_size:
        return True
    if new.database.pool_size > 200:
        return False  # refuse: the database allows 200 connections; confledger records "database_pool:failed"
    pool.resize(new.database.pool_size)
    return True


async def reset_cache(old: AppConfig | None, new: AppConfig) -> bool:
    """Runs on the event loop (async callback): a changed cache config invalidates what is cached."""
    if old is not None and old.cache == new.cache:
        return True
    cache.reconfigure(new.cache.ttl_seconds)
    return True


register_config_callback("database_pool", resize_pool, priority=100, timeout=5.0)
register_config_callback("response_cache", reset_cache, priority=50, async_callback=True, timeout=2.0)

app = FastAPI(title="Docs search (confledger example)")
lifecycle = setup_configuration_lifecycle(
    app,
    config_model=AppConfig,
    config_source=os.environ.get("CONFLEDGER_CONFIG", HERE / "config.yaml"),
    validators=VALIDATORS,
)


@app.get("/search")
async def search(q: str, config: CurrentConfigDep) -> dict[str, Any]:
    """Answer a query with the settings in force for this request."""
    cached = cache.get(q)
    if cached is not None:
        return {**cached, "cached": True}
    answer = {
        "query": q,
        "embedding_model": config.embedding.model,
        "max_pages": config.crawl.max_pages,
        "pool_size": pool.size,
    }
    if config.cache.enable_caching:
        cache.put(q, answer)
    return {**answer, "cached": False}
