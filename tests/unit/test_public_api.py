"""confledger's public surface: ``from confledger import …`` gives what a user needs, and nothing drifts."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import confledger

# The promise, written out once more on purpose: a name added to or dropped from ``__all__`` must be a
# decision someone makes here too, not a side effect of editing the package.
PUBLIC = {
    # the seed's reloader surface
    "ConfigReloader",
    "ReloadOperation",
    "ReloadStatus",
    "ReloadTrigger",
    "get_config_reloader",
    # embedding in FastAPI
    "ApiError",
    "CurrentConfigDep",
    "register_config_callback",
    "setup_configuration_lifecycle",
    "unregister_config_callback",
    # the log, its secrets and telemetry
    "EventLog",
    "SecretCipher",
    "Telemetry",
    "ValidatorSpec",
    "__version__",
    # the error tree
    "AmbiguousHashPrefix",
    "CanonicalizationError",
    "ChainBroken",
    "ConcurrencyConflict",
    "ConfigLookupError",
    "ConfledgerError",
    "EventSchemaError",
    "InitialConfigError",
    "InvalidDatabaseURL",
    "InvalidHashPrefix",
    "LogError",
    "LogNotFound",
    "ModelImportError",
    "NotAllowed",
    "ReadOnlyStore",
    "SchemaError",
    "SchemaTooNew",
    "SecretKeyError",
    "SetupError",
    "SourceError",
    "SourceNotAllowed",
    "StoreUnavailable",
    "TokenError",
    "UnknownConfigHash",
}


def test_all_is_sorted_and_is_the_promised_surface() -> None:
    assert confledger.__all__ == sorted(confledger.__all__)
    assert set(confledger.__all__) == PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_resolves_to_the_object_its_module_defines(name: str) -> None:
    value = getattr(confledger, name)
    assert value is not None
    home = getattr(value, "__module__", None)
    if isinstance(home, str) and home != "typing":  # CurrentConfigDep is an Annotated alias
        assert importlib.import_module(home).__name__.startswith("confledger."), (name, home)
    assert name in dir(confledger)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        confledger.Nope  # noqa: B018


def test_every_error_is_a_confledger_error_with_its_own_code() -> None:
    # ApiError is not a failure of the store but the HTTP answer to one (an HTTPException with a code).
    errors = [
        getattr(confledger, name)
        for name in confledger.__all__
        if name.endswith(("Error", "Found")) and name != "ApiError"
    ]
    errors += [confledger.ChainBroken, confledger.ConcurrencyConflict, confledger.NotAllowed]
    errors += [confledger.ReadOnlyStore, confledger.SchemaTooNew, confledger.StoreUnavailable]
    errors += [confledger.SourceNotAllowed, confledger.UnknownConfigHash, confledger.AmbiguousHashPrefix]
    errors += [confledger.InvalidHashPrefix, confledger.InvalidDatabaseURL]
    codes = {}
    for error in errors:
        assert issubclass(error, confledger.ConfledgerError), error
        codes.setdefault(error.code, error)
        assert codes[error.code] is error, f"{error.__name__} reuses {codes[error.code].__name__}'s code"


def test_importing_confledger_or_its_store_does_not_load_the_web_stack() -> None:
    # The command line reads a log through confledger.store; FastAPI and OpenTelemetry cost it a second.
    probe = (
        "import sys, confledger, confledger.store; "
        "heavy = sorted(m for m in ('fastapi', 'starlette', 'opentelemetry.sdk', 'uvicorn') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_settings_model_does_not_load_the_config_parsers() -> None:
    # Every CLI command reads the settings; only those that read a source need PyYAML and tomllib.
    probe = (
        "import sys, confledger.api.settings, confledger.store.sources; "
        "print(','.join(sorted(m for m in ('yaml', 'tomllib') if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
    from confledger.store.sources import load_source  # still there, loaded on first use

    assert callable(load_source)


def test_the_api_error_is_the_http_answer_with_a_code() -> None:
    from fastapi import HTTPException

    refusal = confledger.ApiError(404, "no such operation", "unknown_operation")
    assert isinstance(refusal, HTTPException)
    assert (refusal.status_code, refusal.detail, refusal.code) == (
        404,
        "no such operation",
        "unknown_operation",
    )
