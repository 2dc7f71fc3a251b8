"""``QueryRedaction``: uvicorn's access log line keeps the API's parameters and hides everything else."""

from __future__ import annotations

import logging

import pytest

from confledger.api.access_log import REDACTED, QueryRedaction

SHOWN = {"limit", "before", "trigger", "from", "to", "token_count"}

# (query string as sent, as logged)
QUERIES = [
    ("limit=5&before=10", "limit=5&before=10"),
    ("token=abc123", REDACTED),
    ("limit=5&access_token=abc123", f"limit=5&{REDACTED}"),
    ("api_key=abc&from=1234567&to=abcdef1", f"{REDACTED}&from=1234567&to=abcdef1"),
    ("sk-live-0123456789", REDACTED),  # a bare value: the name may be the secret itself
    ("Limit=5", REDACTED),  # not the API's parameter (names are case-sensitive)
    ("li%6Dit=5", "li%6Dit=5"),  # a percent-encoded name is the name it decodes to
    ("token_count=3", REDACTED),  # the API's own, but named like a credential: never shown
    ("", ""),
    ("limit=5&&token=x&", f"limit=5&&{REDACTED}&"),  # empty pairs stay empty
]


@pytest.mark.parametrize(("query", "logged"), QUERIES)
def test_only_the_api_parameters_are_shown(query: str, logged: str) -> None:
    assert QueryRedaction(SHOWN).redact(query) == logged


def _access_record(path: str) -> logging.LogRecord:
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 401),
        None,
    )


def test_the_access_line_is_rewritten_before_it_is_formatted() -> None:
    record = _access_record("/api/v1/config/history?limit=5&token=sk-secret-value")
    assert QueryRedaction(SHOWN).filter(record) is True
    assert (
        record.getMessage()
        == f'127.0.0.1:5000 - "GET /api/v1/config/history?limit=5&{REDACTED} HTTP/1.1" 401'
    )


def test_a_line_without_a_query_string_or_of_another_shape_passes_unchanged() -> None:
    plain = _access_record("/healthz")
    QueryRedaction(SHOWN).filter(plain)
    assert plain.getMessage() == '127.0.0.1:5000 - "GET /healthz HTTP/1.1" 401'
    other = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", ("a?token=x",), None)
    QueryRedaction(SHOWN).filter(other)
    assert other.getMessage() == "a?token=x"


def test_a_client_address_with_control_characters_is_written_escaped() -> None:
    # uvicorn's client address may come from X-Forwarded-For as the client wrote it.
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("\x1b[31mEVIL:0", "GET", "/healthz", "1.1", 200),
        None,
    )
    QueryRedaction(SHOWN).filter(record)
    assert record.getMessage() == "'\\x1b[31mEVIL:0' - \"GET /healthz HTTP/1.1\" 200"
