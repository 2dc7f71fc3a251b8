"""Every error confledger raises, in one tree.

Driver errors (sqlite3, psycopg, SQLAlchemy) never leave ``store/``: they are translated where they
enter and chained with ``raise ... from exc``, so the cause stays visible in a debugger but never in a
message shown to an operator. Every class has a stable ``code`` (a reason code for API answers, events
and scripts); ``str(exc)`` is a one-line message that never quotes a secret.

The hierarchy::

    ConfledgerError                 root of everything below; ``code`` is a stable reason code
    ├── LogError                    the event log and the database under it
    │   ├── StoreUnavailable        the database cannot be reached, opened or written
    │   │   └── ReadOnlyStore       the database (or its file) refuses writes
    │   ├── InvalidDatabaseURL      the URL cannot be parsed or names an unsupported backend
    │   ├── LogNotFound             there is no log where a read-only command was pointed
    │   ├── SchemaError             the database schema is not the one this code expects
    │   │   └── SchemaTooNew        the database was migrated by a newer confledger
    │   ├── ChainBroken             ``verify()`` found a link that does not recompute
    │   ├── IntegrityFailed         the log failed its integrity check: writes are refused
    │   ├── ConfigBodyMismatch      a stored config body no longer hashes to the hash it is stored under
    │   │   └── HashSchemeTooNew    the body is under a hash scheme of a newer confledger: not checkable here
    │   ├── EventSchemaError        a payload that its model (or its version) does not accept
    │   ├── ConcurrencyConflict     another ``config.applied`` landed since the caller's expected head
    │   └── FleetLockBusy           another instance held the fleet's operation lock past the wait budget
    ├── SourceError                 a config source that cannot be read, parsed or hashed
    │   └── CanonicalizationError   a value with no canonical JSON form (NaN, Infinity, non-JSON types)
    ├── NotAllowed                  the caller, or the path it named, is not permitted
    │   └── SourceNotAllowed        the path resolves outside the allow-listed directories
    ├── ConfigLookupError           a config hash reference that cannot be resolved
    │   ├── InvalidHashPrefix       not hex, or shorter than 7 digits
    │   ├── UnknownConfigHash       no stored config matches
    │   └── AmbiguousHashPrefix     more than one stored config matches
    ├── ConfigRefusedHere           a config the log holds as applied that this instance's model refuses
    ├── SecretKeyError              encrypted secrets exist but the key is missing or wrong
    │   └── IntegrityKeyError       the key is not the one the log's links and MACs were made with
    └── SetupError                  a setting or argument the service cannot start with
        ├── TokenError              a token setting that cannot be used (too short, unreadable file)
        ├── ModelImportError        ``--model module:Class`` does not name an importable pydantic model
        └── InitialConfigError      an empty log's first config could not be applied at start-up

``InitialConfigError`` is raised by a start rather than serving with no config at all: with an empty log,
the reloader's start applies the source as the initial configuration, and if that fails (the file is
missing, unreadable or invalid, or the services refused it) ``reloader.current`` would otherwise stay
``None`` with nothing but a log line to say so. The failed operation is in the log with its reason; fix the
source and start again. One case is left out on purpose: a source that does not exist yet (a config
mounted after the service starts) is not an error; the start goes on with no config, logs a warning, and
readiness answers 503 until a reload applies one. A log that already holds a config restores it and
never raises this.

Each family means one thing, so a caller can catch by meaning: ``LogError`` is "the store is the
problem, retry or page someone", ``SourceError`` is "fix the file", ``NotAllowed`` is "you may not",
``ConfigLookupError`` is "no such config".
"""

from __future__ import annotations

__all__ = [
    "AmbiguousHashPrefix",
    "CanonicalizationError",
    "ChainBroken",
    "ConcurrencyConflict",
    "ConfigBodyMismatch",
    "ConfigLookupError",
    "ConfigRefusedHere",
    "ConfledgerError",
    "EventSchemaError",
    "FleetLockBusy",
    "HashSchemeTooNew",
    "InitialConfigError",
    "IntegrityFailed",
    "IntegrityKeyError",
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
]


class ConfledgerError(Exception):
    """Base class; ``code`` is a stable machine-readable reason, ``str(exc)`` a one-line message."""

    code: str = "confledger_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ConfigRefusedHere(ConfledgerError):
    """A config the log holds as applied that this instance's model refuses: the fleet decided it
    elsewhere (its follower answered ``invalid``, ``/fleet`` says drifted), or the model changed since.
    This instance keeps running what it ran."""

    code = "current_config_invalid"


# --- the log and its database ------------------------------------------------------------------------


class LogError(ConfledgerError):
    code = "log_error"


class StoreUnavailable(LogError):
    code = "store_unavailable"


class ReadOnlyStore(StoreUnavailable):
    code = "store_read_only"


class InvalidDatabaseURL(LogError):
    code = "invalid_database_url"


class LogNotFound(LogError):
    code = "log_not_found"


class SchemaError(LogError):
    code = "schema_error"


class SchemaTooNew(SchemaError):
    code = "schema_too_new"


class ChainBroken(LogError):
    code = "chain_broken"

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position


class IntegrityFailed(LogError):
    """The log did not pass its integrity check (a link, a MAC, the anchor, a body): no more appends.

    ``reason`` is the check's own reason code (``link_mismatch``, ``truncated``, ``anchor_mismatch``…).
    ``recovery_for(reason)`` is what an operator does about it, said wherever the refusal is: for a change
    in the database (``RECOVERY``), running ``verify`` shows what changed but clears nothing (a record
    that was changed stays changed); for a body of a newer release (``UPGRADE``) nothing was changed.
    """

    code = "integrity_failed"
    RECOVERY = (
        "confledger verify names what changed; restore the database from a backup taken before that "
        "(moving its anchor file away if the backup is older than the anchor), then restart"
    )
    UPGRADE = (
        "a newer confledger stored configs in this log that this release cannot check; nothing was "
        "changed: upgrade this instance, then restart"
    )

    @classmethod
    def recovery_for(cls, reason: str | None) -> str:
        """What an operator does about a failed check of reason code ``reason``."""
        return cls.UPGRADE if reason == HashSchemeTooNew.code else cls.RECOVERY

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConfigBodyMismatch(LogError):
    """A stored body whose recomputed hash is not the one it is stored (and named in events) under."""

    code = "config_body_mismatch"

    def __init__(self, message: str, *, config_hash: str) -> None:
        super().__init__(message)
        self.config_hash = config_hash


class HashSchemeTooNew(ConfigBodyMismatch):
    """A stored body under a hash scheme this release does not know: a newer confledger wrote it.

    Refused wherever a body that does not hash to its hash is (a rollback to it, a restore, a follower's
    read, ``verify``), since this release cannot tell it from an edited one; but it is no sign of an
    edit, so it is never recorded as one in the fleet's log, and its message says to upgrade."""

    code = "hash_scheme_too_new"

    def __init__(self, message: str, *, config_hash: str, scheme: int) -> None:
        super().__init__(message, config_hash=config_hash)
        self.scheme = scheme


class EventSchemaError(LogError):
    code = "event_schema_error"


class ConcurrencyConflict(LogError):
    code = "concurrency_conflict"

    def __init__(self, message: str, *, expected_head: int, conflicting_position: int) -> None:
        super().__init__(message)
        self.expected_head = expected_head
        self.conflicting_position = conflicting_position


class FleetLockBusy(LogError):
    """Another instance's operation held the fleet-wide lock for the whole wait budget.

    ``holder`` names it (``<operation id>@<instance id>``) when the database could say; None otherwise.
    """

    code = "fleet_lock_busy"

    def __init__(self, message: str, *, holder: str | None) -> None:
        super().__init__(message)
        self.holder = holder


# --- config sources ----------------------------------------------------------------------------------


class SourceError(ConfledgerError):
    """A config source was refused; ``code`` is one of the reason codes in ``confledger.store.sources``."""

    code = "source_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        input_sha256: str | None = None,
        size_bytes: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.input_sha256 = input_sha256
        self.size_bytes = size_bytes


class CanonicalizationError(SourceError, ValueError):
    code = "not_canonicalizable"


# --- permission --------------------------------------------------------------------------------------


class NotAllowed(ConfledgerError):
    code = "not_allowed"


class SourceNotAllowed(NotAllowed):
    code = "source_not_allowed"


# --- lookups -----------------------------------------------------------------------------------------


class ConfigLookupError(ConfledgerError, LookupError):
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


# --- keys and setup ----------------------------------------------------------------------------------


class SecretKeyError(ConfledgerError):
    code = "secret_key_error"


class IntegrityKeyError(SecretKeyError):
    """The configured key's check value differs from the log's, or a keyed log is opened without a key."""

    code = "integrity_key_error"


class SetupError(ConfledgerError):
    code = "setup_error"


class TokenError(SetupError, ValueError):
    code = "token_error"


class ModelImportError(SetupError, ValueError):
    code = "model_import_error"


class InitialConfigError(SetupError):
    """The initial configuration of an empty log was not applied; ``operation_id`` names its record."""

    code = "initial_config_not_applied"

    def __init__(self, message: str, *, operation_id: str, reason: str | None) -> None:
        super().__init__(message)
        self.operation_id = operation_id
        self.reason = reason
