"""confledger's write side: the event log, and the commands that append to it.

Names are imported on first use (PEP 562), so importing one light module of the package (the event
models, the errors) does not load SQLAlchemy, Alembic and the database drivers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confledger.store.lazy import lazy_exports

if TYPE_CHECKING:
    from confledger.store.canonical import GENESIS_HASH, canonical_json, config_hash, sha256_hex
    from confledger.store.database import DEFAULT_DATABASE_URL
    from confledger.store.errors import (
        AmbiguousHashPrefix,
        CanonicalizationError,
        ChainBroken,
        ConcurrencyConflict,
        ConfigLookupError,
        ConfledgerError,
        EventSchemaError,
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
    from confledger.store.events import (
        DEFAULT_REGISTRY,
        EventPayload,
        EventRegistry,
        NewEvent,
        OperationKind,
        OperationStatus,
        RecordedEvent,
        ServiceOutcome,
        Trigger,
    )
    from confledger.store.log import Checkpoint, EventLog, PreparedConfig, StoredConfig, VerifyReport
    from confledger.store.secrets import SecretCipher

_HOMES: dict[str, str] = {
    "AmbiguousHashPrefix": "confledger.store.errors",
    "CanonicalizationError": "confledger.store.errors",
    "ChainBroken": "confledger.store.errors",
    "Checkpoint": "confledger.store.log",
    "ConcurrencyConflict": "confledger.store.errors",
    "ConfigLookupError": "confledger.store.errors",
    "ConfledgerError": "confledger.store.errors",
    "DEFAULT_DATABASE_URL": "confledger.store.database",
    "DEFAULT_REGISTRY": "confledger.store.events",
    "EventLog": "confledger.store.log",
    "EventPayload": "confledger.store.events",
    "EventRegistry": "confledger.store.events",
    "EventSchemaError": "confledger.store.errors",
    "GENESIS_HASH": "confledger.store.canonical",
    "InvalidDatabaseURL": "confledger.store.errors",
    "InvalidHashPrefix": "confledger.store.errors",
    "LogError": "confledger.store.errors",
    "LogNotFound": "confledger.store.errors",
    "ModelImportError": "confledger.store.errors",
    "NewEvent": "confledger.store.events",
    "NotAllowed": "confledger.store.errors",
    "OperationKind": "confledger.store.events",
    "OperationStatus": "confledger.store.events",
    "PreparedConfig": "confledger.store.log",
    "ReadOnlyStore": "confledger.store.errors",
    "RecordedEvent": "confledger.store.events",
    "SchemaError": "confledger.store.errors",
    "SchemaTooNew": "confledger.store.errors",
    "SecretCipher": "confledger.store.secrets",
    "SecretKeyError": "confledger.store.errors",
    "ServiceOutcome": "confledger.store.events",
    "SetupError": "confledger.store.errors",
    "SourceError": "confledger.store.errors",
    "SourceNotAllowed": "confledger.store.errors",
    "StoreUnavailable": "confledger.store.errors",
    "StoredConfig": "confledger.store.log",
    "TokenError": "confledger.store.errors",
    "Trigger": "confledger.store.events",
    "UnknownConfigHash": "confledger.store.errors",
    "VerifyReport": "confledger.store.log",
    "canonical_json": "confledger.store.canonical",
    "config_hash": "confledger.store.canonical",
    "sha256_hex": "confledger.store.canonical",
}

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REGISTRY",
    "GENESIS_HASH",
    "AmbiguousHashPrefix",
    "CanonicalizationError",
    "ChainBroken",
    "Checkpoint",
    "ConcurrencyConflict",
    "ConfigLookupError",
    "ConfledgerError",
    "EventLog",
    "EventPayload",
    "EventRegistry",
    "EventSchemaError",
    "InvalidDatabaseURL",
    "InvalidHashPrefix",
    "LogError",
    "LogNotFound",
    "ModelImportError",
    "NewEvent",
    "NotAllowed",
    "OperationKind",
    "OperationStatus",
    "PreparedConfig",
    "ReadOnlyStore",
    "RecordedEvent",
    "SchemaError",
    "SchemaTooNew",
    "SecretCipher",
    "SecretKeyError",
    "ServiceOutcome",
    "SetupError",
    "SourceError",
    "SourceNotAllowed",
    "StoreUnavailable",
    "StoredConfig",
    "TokenError",
    "Trigger",
    "UnknownConfigHash",
    "VerifyReport",
    "canonical_json",
    "config_hash",
    "sha256_hex",
]


__getattr__ = lazy_exports(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
