"""confledger: an event-sourced configuration store with zero-downtime reloading.

The names below are the public surface: they keep working across minor releases. Everything else
(``confledger.store``, ``confledger.projections``, ``confledger.api``) is reachable but not promised.

Names are imported on first use rather than when ``confledger`` is imported, so ``confledger.store``
(and the command line, which reads a log without a web stack) never pays for FastAPI and OpenTelemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confledger.store.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from confledger.api.deps import CurrentConfigDep
    from confledger.api.errors import ApiError
    from confledger.api.lifecycle import (
        register_config_callback,
        setup_configuration_lifecycle,
        unregister_config_callback,
    )
    from confledger.api.reloader import ConfigReloader, ReloadTrigger, get_config_reloader
    from confledger.api.telemetry import Telemetry
    from confledger.store.errors import (
        AmbiguousHashPrefix,
        CanonicalizationError,
        ChainBroken,
        ConcurrencyConflict,
        ConfigLookupError,
        ConfledgerError,
        EventSchemaError,
        InitialConfigError,
        InvalidDatabaseURL,
        InvalidHashPrefix,
        LogError,
        LogNotFound,
        ModelImportError,
        NotAllowed,
        ReadOnlyStore,
        SchemaError,
        SchemaTooNew,
        SecretKeyError,
        SetupError,
        SourceError,
        SourceNotAllowed,
        StoreUnavailable,
        TokenError,
        UnknownConfigHash,
    )
    from confledger.store.log import EventLog
    from confledger.store.outcome import ReloadOperation, ReloadStatus
    from confledger.store.secrets import SecretCipher
    from confledger.store.validation import ValidatorSpec

# Where each public name lives; ``__getattr__`` imports the module the first time a name is asked for.
_HOMES: dict[str, str] = {
    "ApiError": "confledger.api.errors",
    "ConfigReloader": "confledger.api.reloader",
    "CurrentConfigDep": "confledger.api.deps",
    "EventLog": "confledger.store.log",
    "ReloadOperation": "confledger.store.outcome",
    "ReloadStatus": "confledger.store.outcome",
    "ReloadTrigger": "confledger.api.reloader",
    "SecretCipher": "confledger.store.secrets",
    "Telemetry": "confledger.api.telemetry",
    "ValidatorSpec": "confledger.store.validation",
    "get_config_reloader": "confledger.api.reloader",
    "register_config_callback": "confledger.api.lifecycle",
    "setup_configuration_lifecycle": "confledger.api.lifecycle",
    "unregister_config_callback": "confledger.api.lifecycle",
    **{
        name: "confledger.store.errors"
        for name in (
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
        )
    },
}

__all__ = [
    "AmbiguousHashPrefix",
    "ApiError",
    "CanonicalizationError",
    "ChainBroken",
    "ConcurrencyConflict",
    "ConfigLookupError",
    "ConfigReloader",
    "ConfledgerError",
    "CurrentConfigDep",
    "EventLog",
    "EventSchemaError",
    "InitialConfigError",
    "InvalidDatabaseURL",
    "InvalidHashPrefix",
    "LogError",
    "LogNotFound",
    "ModelImportError",
    "NotAllowed",
    "ReadOnlyStore",
    "ReloadOperation",
    "ReloadStatus",
    "ReloadTrigger",
    "SchemaError",
    "SchemaTooNew",
    "SecretCipher",
    "SecretKeyError",
    "SetupError",
    "SourceError",
    "SourceNotAllowed",
    "StoreUnavailable",
    "Telemetry",
    "TokenError",
    "UnknownConfigHash",
    "ValidatorSpec",
    "__version__",
    "get_config_reloader",
    "register_config_callback",
    "setup_configuration_lifecycle",
    "unregister_config_callback",
]


__getattr__ = lazy_exports(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
