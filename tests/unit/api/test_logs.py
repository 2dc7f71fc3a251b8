"""api.logs: serve's log output, and the one line a lost pooled connection gets."""

from __future__ import annotations

import logging

import pytest

from confledger.api.logs import OneLineDriverErrors, configure_logging


def _record_with(error: BaseException | None) -> logging.LogRecord:
    record = logging.LogRecord(
        "sqlalchemy.pool.impl.QueuePool",
        logging.ERROR,
        __file__,
        1,
        "%s",
        ("Exception during reset or similar",),
        None,
    )
    if error is not None:
        try:
            raise error
        except BaseException as raised:
            record.exc_info = (type(raised), raised, raised.__traceback__)
    return record


# (what the pool logged with, the one line it becomes)
LOST = [
    (
        OSError("the connection is lost\nmore detail on a second line"),
        "Exception during reset or similar: OSError: the connection is lost",
    ),
    (RuntimeError(""), "Exception during reset or similar: RuntimeError"),
    (None, "Exception during reset or similar"),  # nothing to shorten
]


@pytest.mark.parametrize(("error", "line"), LOST)
def test_a_pool_error_is_one_line_with_its_cause(error: BaseException | None, line: str) -> None:
    record = _record_with(error)
    assert OneLineDriverErrors().filter(record) is True  # kept, never dropped
    assert record.getMessage() == line
    assert record.exc_info is None
    assert "\n" not in logging.Formatter().format(record)


def test_a_lost_connection_logged_by_the_pool_is_one_line_in_serve_s_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pool = logging.getLogger("sqlalchemy.pool")
    before = (list(pool.handlers), pool.propagate)
    confledger = logging.getLogger("confledger")
    kept = (list(confledger.handlers), confledger.propagate, confledger.level)
    try:
        configure_logging()
        # As the pool logs it: through its own instance logger, a child of sqlalchemy.pool.
        try:
            raise OSError("the connection is lost\nserver closed the connection unexpectedly")
        except OSError:
            logging.getLogger("sqlalchemy.pool.impl.QueuePool").error(
                "Exception during reset or similar", exc_info=True
            )
        said = capsys.readouterr().err.strip().splitlines()
        assert len(said) == 1
        assert said[0].endswith("Exception during reset or similar: OSError: the connection is lost")
    finally:
        pool.handlers[:], pool.propagate = before
        confledger.handlers[:], confledger.propagate = kept[0], kept[1]
        confledger.setLevel(kept[2])
