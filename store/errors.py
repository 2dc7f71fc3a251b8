"""Every error the write side raises.

Driver errors (sqlite3, psycopg, SQLAlchemy) never leave ``store/``: they are translated here, where they
enter, and chained with ``raise ... from exc`` so the cause stays visible in a debugger but never in a
message shown to an operator.

The hierarchy::

    StoreError                      base of everything below; ``code`` is a stable reason code
    ├── StoreUnavailable            the database cannot be reached, opened or written
    │   └── ReadOnlyStore           the database (or its file) refuses writes
    ├── InvalidDatabaseURL          the URL cannot be parsed or names an unsupported backend
    ├── SchemaError                 the database schema is not the one this code expects
    │   └── SchemaTooNew            the database was migrated by a newer confledger
    ├── ConcurrencyConflict         another ``config.applied`` landed since the caller's expected head
    ├── ChainBroken                 ``verify()`` found a link that does not recompute
    ├── EventSchemaError            a payload that its model (or its version) does not accept
    ├── CanonicalizationError       a value with no canonical JSON form (NaN, Infinity, non-JSON types)
    ├── ConfigLookupError           a config hash reference that cannot be resolved
    │   ├── InvalidHashPrefix       not hex, or shorter than 7 digits
    │   ├── UnknownConfigHash       no stored config matches
    │   └── AmbiguousHashPrefix     more than one stored config matches
    ├── SecretKeyError              encrypted secrets exist but the key is missing or wrong
    ├── SourceError                 a config source that cannot be read or parsed (``code`` says why)
    │   └── SourceNotAllowed        the path resolves outside the allow-listed directories
    └── OperationError              a reload or rollback that cannot start
        └── OperationInProgress     another operation holds this instance's operation slot
"""

from __future__ import annotations

__all__ = [
    "AmbiguousHashPrefix",
    "CanonicalizationError",
    "ChainBroken",
    "ConcurrencyConflict",
    "ConfigLookupError",
    "EventSchemaError",
    "InvalidDatabaseURL",
    "InvalidHashPrefix",
    "OperationError",
    "OperationInProgress",
    "ReadOnlyStore",
    "SchemaError",
    "SchemaTooNew",
    "SecretKeyError",
    "SourceError",
    "SourceNotAllowed",
    "StoreError",
    "StoreUnavailable",
    "UnknownConfigHash",
]


class StoreError(Exception):
    """Base class; ``code`` is a stable machine-readable reason, ``str(exc)`` a one-line message."""

    code: str = "store_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class StoreUnavailable(StoreError):
    code = "store_unavailable"


class ReadOnlyStore(StoreUnavailable):
    code = "store_read_only"


class InvalidDatabaseURL(StoreError):
    code = "invalid_database_url"


class SchemaError(StoreError):
    code = "schema_error"


class SchemaTooNew(SchemaError):
    code = "schema_too_new"


class ConcurrencyConflict(StoreError):
    code = "concurrency_conflict"

    def __init__(self, message: str, *, expected_head: int, conflicting_position: int) -> None:
        super().__init__(message)
        self.expected_head = expected_head
        self.conflicting_position = conflicting_position


class ChainBroken(StoreError):
    code = "chain_broken"

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position


class EventSchemaError(StoreError):
    code = "event_schema_error"


class CanonicalizationError(StoreError, ValueError):
    code = "not_canonicalizable"


class ConfigLookupError(StoreError, LookupError):
    code = "config_lookup_error"


class InvalidHashPrefix(ConfigLookupError):
    code = "invalid_hash_prefix"


class UnknownConfigHash(ConfigLookupError):
    code = "unknown_config_hash"


class AmbiguousHashPrefix(ConfigLookupError):
    code = "ambiguous_hash_prefix"

    def __init__(self, message: str, *, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


class SecretKeyError(StoreError):
    code = "secret_key_error"


class SourceError(StoreError):
    """A config source was refused; ``code`` is one of the reason codes in ``store.sources``."""

    code = "source_error"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        input_sha256: str | None = None,
        size_bytes: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.input_sha256 = input_sha256
        self.size_bytes = size_bytes


class SourceNotAllowed(SourceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="source_not_allowed")


class OperationError(StoreError):
    code = "operation_error"


class OperationInProgress(OperationError):
    code = "operation_in_progress"

    def __init__(self, message: str, *, running_operation_id: str | None) -> None:
        super().__init__(message)
        self.running_operation_id = running_operation_id
