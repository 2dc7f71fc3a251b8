"""``api.settings.Settings``: the values an operator types, as the service takes them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from confledger.api.settings import Settings, misspelt_variables, signing_key_of
from tests.integration.api.service_harness import clear_confledger_environment


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_confledger_environment(monkeypatch)


# (setting, as typed, as taken): the enumerated settings take any case, as their docs say
ANY_CASE = [
    ("sqlite_synchronous", "normal", "NORMAL"),
    ("sqlite_synchronous", "Extra", "EXTRA"),
    ("sqlite_synchronous", "FULL", "FULL"),
    ("log_level", "DEBUG", "debug"),
    ("log_level", "Warning", "warning"),
]


@pytest.mark.parametrize(("name", "typed", "taken"), ANY_CASE)
def test_an_enumerated_setting_takes_any_case(name: str, typed: str, taken: str) -> None:
    assert getattr(Settings(**{name: typed}), name) == taken


@pytest.mark.parametrize(("name", "typed"), [("sqlite_synchronous", "fast"), ("log_level", "loud")])
def test_a_value_outside_the_choices_is_refused(name: str, typed: str) -> None:
    with pytest.raises(ValidationError):
        Settings(**{name: typed})


def test_a_misspelt_variable_is_named_with_the_setting_it_may_have_meant() -> None:
    environ = {
        "CONFLEDGER_ADMIN_TOKN": "x",  # a typo: pydantic-settings alone would ignore it without a word
        "CONFLEDGER_SOMETHING_ELSE": "x",
        "CONFLEDGER_ADMIN_TOKEN": "x",
        "CONFLEDGER_URL": "http://127.0.0.1:8000",  # the CLI's, not a setting
        "CONFLEDGER_TEST_PG_URL": "postgresql+psycopg://postgres@127.0.0.1/test",
        "PATH": "/usr/bin",
    }
    assert misspelt_variables(environ) == [
        "CONFLEDGER_ADMIN_TOKN is not a confledger setting and is ignored (did you mean CONFLEDGER_ADMIN_TOKEN?)",
        "CONFLEDGER_SOMETHING_ELSE is not a confledger setting and is ignored",
    ]


# (as set, as the log is keyed with)
SIGNING_KEYS = [
    ("k" * 40 + "\n", "k" * 40),  # a Kubernetes secret made from a file
    (" " + "k" * 40 + "\r\n", "k" * 40),
    ("k" * 40, "k" * 40),
    ("  \n", None),  # blank: as if unset, so the encryption key signs
]


@pytest.mark.parametrize(("typed", "taken"), SIGNING_KEYS)
def test_the_signing_key_is_taken_without_surrounding_whitespace(typed: str, taken: str | None) -> None:
    assert signing_key_of(Settings(signing_key=typed)) == taken


# (pool size, overflow): the log's writer and the fleet lock hold two of the pool's connections for good
POOLS_TAKEN = [
    (5, 10),  # the defaults, SQLAlchemy's own
    (3, 0),  # the smallest kept: one connection for reads
    (1, 2),  # as small, the one for reads opened for a read and closed after it
]
POOLS_REFUSED = [
    (2, 0),  # reads would wait for a connection that never comes back
    (1, 1),
]


@pytest.mark.parametrize(("size", "overflow"), POOLS_TAKEN)
def test_a_pool_that_leaves_reads_a_connection_is_taken(size: int, overflow: int) -> None:
    settings = Settings(database_pool_size=size, database_max_overflow=overflow)
    assert (settings.database_pool_size, settings.database_max_overflow) == (size, overflow)


@pytest.mark.parametrize(("size", "overflow"), POOLS_REFUSED)
def test_a_pool_that_leaves_reads_none_is_refused(size: int, overflow: int) -> None:
    with pytest.raises(ValidationError, match="reads need one more"):
        Settings(database_pool_size=size, database_max_overflow=overflow)
