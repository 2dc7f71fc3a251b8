"""``store.candidate``: what a reload's load records about the file it read, on both backends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from confledger.api.reloader import ConfigReloader
from confledger.store import EventLog, SecretCipher

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_loaded_file_s_digest_is_kept_only_when_it_holds_no_secret(
    database_url: str, tmp_path: Path
) -> None:
    """A plain sha256 of a file whose secrets are the only unknown part would let a reader of the log test
    guesses at them; the config hash takes them as keyed digests for that reason."""
    cipher = SecretCipher([SecretCipher.generate_key()])
    with EventLog(database_url, cipher=cipher, instance_id="digest-test") as log:
        reloader = ConfigReloader(log)
        await reloader.start()
        try:
            for name, body in (("plain", {"level": 1}), ("secret", {"level": 1, "password": "483920"})):
                source = tmp_path / f"{name}.json"
                source.write_text(json.dumps(body), encoding="utf-8")
                assert (await reloader.reload_config(config_source=source)).success
            broken = tmp_path / "broken.json"
            broken.write_text('{"password": "483920", ', encoding="utf-8")
            assert not (await reloader.reload_config(config_source=broken)).success
        finally:
            await reloader.stop()
        loaded = [event.payload for event in log.read(types=["config.loaded"])]
        failed = [event.payload for event in log.read(types=["config.load_failed"])]
    plain_digest = hashlib.sha256((tmp_path / "plain.json").read_bytes()).hexdigest()
    assert [payload.input_sha256 for payload in loaded] == [plain_digest, None]  # type: ignore[attr-defined]
    assert [payload.input_sha256 for payload in failed] == [None]  # type: ignore[attr-defined]
