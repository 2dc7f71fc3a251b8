"""Log output for ``confledger serve``: text by default, one JSON object per line with ``CONFLEDGER_LOG_FORMAT=json``.

Loggers are named after the module that logs (``confledger.store.operations``, ``confledger.api.lifecycle``
…), all under ``confledger``: ``logging.getLogger("confledger").setLevel(logging.DEBUG)`` turns everything up,
``logging.getLogger("confledger.store").setLevel(...)`` one part. Every operation ends with one line whose
``confledger`` extra holds the operation id, trace id, trigger, actor, status and durations.
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "OneLineDriverErrors", "configure_logging", "uvicorn_log_config"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "confledger", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: a traceback's locals and messages may quote config contents.
            entry["error_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class OneLineDriverErrors(logging.Filter):
    """SQLAlchemy's pool logs a connection it could not reset (PostgreSQL terminated it, or restarted)
    with the whole traceback, once per pooled connection: a dozen multi-line tracebacks for one event
    that confledger already reports in one line (and recovers from). Kept, as one line with its cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {cause}".rstrip(": ")
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("confledger")
    logger.handlers = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    # A logger's own filters never see its children's records (the pool logs through
    # sqlalchemy.pool.impl.QueuePool); a handler of its own here does, with the filter on it.
    pool_handler = logging.StreamHandler()
    pool_handler.setFormatter(handler.formatter)
    pool_handler.addFilter(OneLineDriverErrors())
    pool = logging.getLogger("sqlalchemy.pool")
    pool.handlers = [pool_handler]
    pool.propagate = False


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's own logging set-up (its access and error lines), as JSON lines too when ``log_format`` is
    json: one format per process, so a log shipper parses every line the same way."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    if log_format == "json":
        for name in config["formatters"]:
            config["formatters"][name] = {"()": f"{__name__}.JsonFormatter"}
    return config
