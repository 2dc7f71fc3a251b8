"""confledger's write side: the event log, and the commands that append to it."""

from __future__ import annotations

from store.canonical import GENESIS_HASH, canonical_json, config_hash, sha256_hex
from store.database import DEFAULT_DATABASE_URL
from store.errors import (
    AmbiguousHashPrefix,
    CanonicalizationError,
    ChainBroken,
    ConcurrencyConflict,
    ConfigLookupError,
    EventSchemaError,
    InvalidDatabaseURL,
    InvalidHashPrefix,
    OperationError,
    OperationInProgress,
    ReadOnlyStore,
    SchemaError,
    SchemaTooNew,
    SecretKeyError,
    SourceError,
    SourceNotAllowed,
    StoreError,
    StoreUnavailable,
    UnknownConfigHash,
)
from store.events import (
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
from store.log import Checkpoint, EventLog, PreparedConfig, StoredConfig, VerifyReport
from store.secrets import SecretCipher

__version__ = "0.1.0"

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
    "EventLog",
    "EventPayload",
    "EventRegistry",
    "EventSchemaError",
    "InvalidDatabaseURL",
    "InvalidHashPrefix",
    "NewEvent",
    "OperationError",
    "OperationInProgress",
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
    "SourceError",
    "SourceNotAllowed",
    "StoreError",
    "StoreUnavailable",
    "StoredConfig",
    "Trigger",
    "UnknownConfigHash",
    "VerifyReport",
    "__version__",
    "canonical_json",
    "config_hash",
    "sha256_hex",
]
