"""uvicorn's access log without secrets from query strings (``confledger serve``).

uvicorn writes each request line as sent, query string included, so a client that put its token in
the URL (``?token=…``) had it written to the log. The API refuses such a request (401), and this
filter keeps the value out of the log line: a query parameter's value is shown only when the API
defines that parameter and its name does not look like a credential; anything else is shown as
``[redacted]``, name included (a stray name may be the secret itself).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from fastapi import FastAPI

from confledger.api.deps import CREDENTIAL_PARAMETER

__all__ = ["QueryRedaction", "query_parameter_names"]

REDACTED = "[redacted]"


def query_parameter_names(app: FastAPI) -> set[str]:
    """Every query parameter an operation of ``app`` declares, from its OpenAPI schema."""
    names: set[str] = set()
    for operations in app.openapi().get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()) if isinstance(operation, dict) else ():
                if parameter.get("in") == "query":
                    names.add(str(parameter["name"]))
    return names


class QueryRedaction(logging.Filter):
    """Rewrites the path argument of uvicorn's access record: ``'%s - "%s %s HTTP/%s" %d'``."""

    def __init__(self, shown: Iterable[str]) -> None:
        super().__init__()
        self.shown = frozenset(name for name in shown if not CREDENTIAL_PARAMETER.search(name))

    def redact(self, query: str) -> str:
        pairs = []
        for pair in query.split("&"):
            name = unquote_plus(pair.partition("=")[0])
            pairs.append(pair if not pair or name in self.shown else REDACTED)
        return "&".join(pairs)

    def filter(self, record: logging.LogRecord) -> bool:
        arguments: Any = record.args
        if isinstance(arguments, tuple) and len(arguments) >= 3 and isinstance(arguments[2], str):
            path, separator, query = arguments[2].partition("?")
            if separator:
                arguments = (*arguments[:2], f"{path}?{self.redact(query)}", *arguments[3:])
            if isinstance(arguments[0], str) and not arguments[0].isprintable():
                # "host:port", the host from X-Forwarded-For as a client wrote it (see client_address).
                arguments = (ascii(arguments[0]), *arguments[1:])
            record.args = arguments
        return True
