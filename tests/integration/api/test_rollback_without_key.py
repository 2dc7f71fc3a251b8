"""A rollback whose target's secrets cannot be decrypted fails as a recorded operation, not an exception."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio

from confledger.api.reloader import ConfigReloader
from confledger.examples.app_config import VALIDATORS, AppConfig
from confledger.store import EventLog, SecretCipher

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "config.yaml"


def test_rollback_to_a_config_sealed_with_another_key_is_a_recorded_failure(
    database_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE, source)
    first_key = SecretCipher([SecretCipher.generate_key()])

    # Links are signed with their own key here, so replacing the encryption key leaves the chain's key
    # (derived from the encryption key otherwise) in place: only the secrets become unreadable.
    log = EventLog(database_url, cipher=first_key, signing_key="a signing key of forty characters, or so")

    async def scenario() -> None:
        async with ConfigReloader(
            log,
            config_model=AppConfig,
            config_source=source,
            validators=VALIDATORS,
        ) as reloader:
            first = reloader.current_hash
            source.write_text(source.read_text().replace("pool_size: 20", "pool_size: 21"))
            assert (await reloader.reload_config()).success
            # The key is rotated without keeping the old one: the first config's secrets are unreadable.
            reloader.log.cipher = SecretCipher([SecretCipher.generate_key()])
            current = reloader.current_hash
            operation = await reloader.rollback_config(first)
            assert not operation.success
            assert operation.reason == "secret_key_error"
            assert reloader.current_hash == current
            types = [event.type for event in reloader.log.read_operation(operation.operation_id)]
            assert types == ["operation.started", "operation.completed"]

    try:
        anyio.run(scenario)
    finally:
        log.close()
