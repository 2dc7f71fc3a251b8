"""store.integrity without a database: purpose keys, the keyed config hash against a secret guesser, the
anchor file."""

from __future__ import annotations

import itertools
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from confledger.store import SecretCipher
from confledger.store.canonical import canonical_bytes, config_hash
from confledger.store.errors import IntegrityKeyError
from confledger.store.integrity import (
    CONFIG_HASH_KEYED,
    CONFIG_HASH_PLAIN,
    Anchor,
    AnchorFile,
    AnchorUnreadable,
    IntegrityKeys,
    candidate_keys,
    config_hash_as,
    read_anchor,
    write_anchor,
)

PASSWORD = ("database", "password")
SECRET_PATHS = [PASSWORD]


def shop(password: str) -> dict[str, Any]:
    return {"name": "shop", "database": {"host": "db", "port": 5432, "password": password}}


def guesses() -> list[str]:
    # The red-team run's shape: season + year + "!" among ~2,500 candidates.
    words = ["Spring", "Summer", "Autumn", "Winter", "Password", "Welcome", "Company", "Secret"]
    years = [str(year) for year in range(1990, 2030)]
    suffixes = ["", "!", "?", "#", "1", "123", "!!", "@"]
    return ["".join(parts) for parts in itertools.product(words, years, suffixes)]


def guess_password(known_hash: str, hasher: Any) -> str | None:
    """What a read-token holder can do: the rest of the config is known, the hash is known."""
    return next((guess for guess in guesses() if hasher(shop(guess)) == known_hash), None)


def test_the_plain_hash_gives_a_secret_away_to_a_guesser() -> None:
    # The attack of issue 13 item 4 on a version-1 hash (as every body stored before 0002_integrity has).
    leaked = config_hash_as(shop("Summer2024!"), SECRET_PATHS, CONFIG_HASH_PLAIN, None)
    assert len(guesses()) > 2_000
    assert guess_password(leaked, config_hash) == "Summer2024!"


def test_the_keyed_hash_gives_nothing_to_a_guesser_without_the_key() -> None:
    keys = IntegrityKeys(b"k" * 32, origin="test")
    leaked = config_hash_as(shop("Summer2024!"), SECRET_PATHS, CONFIG_HASH_KEYED, keys)
    attacker_keys = IntegrityKeys(b"a" * 32, origin="attacker")

    def keyed_with_a_guessed_key(body: dict[str, Any]) -> str:
        return config_hash_as(body, SECRET_PATHS, CONFIG_HASH_KEYED, attacker_keys)

    def keyed_with_no_key(body: dict[str, Any]) -> str:  # the secret digest left out altogether
        return config_hash({**body, "database": {**body["database"], "password": None}})

    for hasher in (config_hash, keyed_with_a_guessed_key, keyed_with_no_key):
        assert guess_password(leaked, hasher) is None
    # The key holder still tells the right password from a wrong one: a changed secret is a changed config.
    assert config_hash_as(shop("Summer2024!"), SECRET_PATHS, CONFIG_HASH_KEYED, keys) == leaked
    assert config_hash_as(shop("Summer2024?"), SECRET_PATHS, CONFIG_HASH_KEYED, keys) != leaked


def test_a_body_without_secrets_has_one_hash_under_both_schemes() -> None:
    # So an old log's secret-free configs keep their hashes, and a reload of the same file is unchanged.
    body = {"name": "shop", "workers": 4}
    keys = IntegrityKeys(b"k" * 32, origin="test")
    assert config_hash_as(body, [], CONFIG_HASH_KEYED, keys) == config_hash_as(
        body, [], CONFIG_HASH_PLAIN, None
    )


def test_a_keyed_hash_over_secrets_needs_the_key() -> None:
    with pytest.raises(IntegrityKeyError):
        config_hash_as(shop("x"), SECRET_PATHS, CONFIG_HASH_KEYED, None)


def test_purpose_keys_differ_and_the_check_value_names_the_key() -> None:
    keys = IntegrityKeys(b"m" * 32, origin="test")
    message = b"the same bytes"
    assert keys.link_mac(message) != keys.secret_digest("the same bytes")
    assert keys.record_mac("checkpoint", {"a": 1}) != keys.record_mac("integrity.anchor", {"a": 1})
    assert IntegrityKeys(b"m" * 32, origin="again").check_value == keys.check_value
    assert IntegrityKeys(b"n" * 32, origin="other").check_value != keys.check_value


def test_the_signing_key_wins_and_must_be_long_enough() -> None:
    cipher = SecretCipher([SecretCipher.generate_key(), SecretCipher.generate_key()])
    from_cipher = candidate_keys(None, cipher)
    assert len(from_cipher) == 2  # newest first: a rotated key list still finds the old key
    signed = candidate_keys("s" * 40, cipher)
    assert [keys.origin for keys in signed] == ["CONFLEDGER_SIGNING_KEY"]
    assert signed[0].check_value not in {keys.check_value for keys in from_cipher}
    with pytest.raises(IntegrityKeyError, match="CONFLEDGER_SIGNING_KEY"):
        candidate_keys("short", cipher)
    assert candidate_keys(None, None) == []


def test_the_anchor_file_round_trips_with_mode_0600(tmp_path: Path) -> None:
    keys = IntegrityKeys(b"k" * 32, origin="test")
    path = tmp_path / "confledger.db.anchor"
    assert read_anchor(path, keys) is None
    anchor_file = AnchorFile(path)
    try:
        for position in (12, 13, 14):
            anchor_file.write(Anchor("log-1", position, f"{position:064x}"), keys)
            assert read_anchor(path, keys) == Anchor("log-1", position, f"{position:064x}")
    finally:
        anchor_file.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("log_id", ["log-1", 'a "quoted",\n"position":1 id', "é"])
def test_a_slot_is_the_canonical_json_of_the_anchor_and_its_mac(tmp_path: Path, log_id: str) -> None:
    keys = IntegrityKeys(b"k" * 32, origin="test")
    path = tmp_path / "anchor"
    anchor = Anchor(log_id, 12, "ab" * 32)
    write_anchor(path, anchor, keys)
    value = anchor.value()
    expected = canonical_bytes({**value, "mac": keys.record_mac("integrity.anchor", value)})
    assert path.read_bytes() == expected.ljust(511) + b"\n"
    assert read_anchor(path, keys) == anchor


def test_a_slot_json_dumps_wrote_still_reads(tmp_path: Path) -> None:
    keys = IntegrityKeys(b"k" * 32, origin="test")
    path = tmp_path / "anchor"
    value = Anchor("log-1", 12, "ab" * 32).value()
    text = json.dumps({**value, "mac": keys.record_mac("integrity.anchor", value)}, separators=(",", ":"))
    path.write_bytes(text.encode().ljust(511) + b"\n")
    assert read_anchor(path, keys) == Anchor("log-1", 12, "ab" * 32)


def test_a_torn_write_leaves_the_older_anchor(tmp_path: Path) -> None:
    # A crash mid-write damages one slot: the other still holds an anchor, older and still true.
    keys = IntegrityKeys(b"k" * 32, origin="test")
    path = tmp_path / "anchor"
    anchor_file = AnchorFile(path)
    anchor_file.write(Anchor("log-1", 12, "ab" * 32), keys)
    anchor_file.write(Anchor("log-1", 13, "cd" * 32), keys)
    anchor_file.close()
    data = bytearray(path.read_bytes())
    data[512 + 40 : 512 + 60] = b"\x00" * 20  # the newer slot, half written
    path.write_bytes(bytes(data))
    assert read_anchor(path, keys) == Anchor("log-1", 12, "ab" * 32)


def edit_every_slot(path: Path, edit: Any) -> None:
    data = path.read_bytes()
    slots = []
    for index in range(2):
        raw = data[index * 512 : (index + 1) * 512]
        if raw.strip():
            edited = edit(json.loads(raw))
            raw = (edited if isinstance(edited, str) else json.dumps(edited)).encode().ljust(511) + b"\n"
        slots.append(raw)
    path.write_bytes(b"".join(slots))


# Each way an anchor file stops being one this key wrote (every slot edited alike).
@pytest.mark.parametrize(
    "edit",
    [
        lambda stored: {**stored, "position": stored["position"] - 3},  # lowered to hide a cut tail
        lambda stored: {**stored, "hash": "00" * 32},  # another head
        lambda stored: {key: value for key, value in stored.items() if key != "mac"},  # MAC dropped
        lambda _stored: "not an anchor",  # damaged
    ],
)
def test_an_edited_anchor_file_is_refused(tmp_path: Path, edit: Any) -> None:
    keys = IntegrityKeys(b"k" * 32, origin="test")
    path = tmp_path / "anchor"
    anchor_file = AnchorFile(path)
    anchor_file.write(Anchor("log-1", 12, "ab" * 32), keys)
    anchor_file.write(Anchor("log-1", 13, "cd" * 32), keys)
    anchor_file.close()
    edit_every_slot(path, edit)
    with pytest.raises(AnchorUnreadable):
        read_anchor(path, keys)


def test_an_anchor_written_with_another_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "anchor"
    write_anchor(path, Anchor("log-1", 12, "ab" * 32), IntegrityKeys(b"k" * 32, origin="one"))
    with pytest.raises(AnchorUnreadable, match="another key"):
        read_anchor(path, IntegrityKeys(b"j" * 32, origin="two"))
