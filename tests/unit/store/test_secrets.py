"""store.secrets: which names are secret, sealing them at rest, and redacting them for display."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from store.canonical import canonical_json
from store.errors import SecretKeyError
from store.secrets import (
    REDACTED,
    SEALED_MARKER,
    SecretCipher,
    find_secret_paths,
    is_sealed,
    looks_secret,
    redact,
    seal,
    unseal,
)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("max_tokens", False),  # "tokens" is a count, not a token
        ("api_key_header", False),  # names the header that carries a key, holds no key
        ("passwords", True),  # a list of them is no less secret
        ("token_url", False),  # where to fetch a token, not the token
        ("password_file", False),  # a path to a secret, not the secret
        ("tokenizer", False),  # a name part must match whole
        ("keyspace", False),  # "key" alone is not a secret
        ("sort_key", False),  # nor is a key that sorts
        ("public_key", False),  # public by definition
        ("monkey", False),  # substring "key" inside a word
        ("cwd", False),  # "pwd" inside a word
        ("bypass", False),  # "pass" inside a word
        ("api_key", True),  # snake_case pair
        ("apiKey", True),  # camelCase pair
        ("APIKEY", True),  # one upper-case word
        ("FIRECRAWL_API_KEY", True),  # environment-variable style
        ("dbPassword", True),  # camelCase part
        ("passwd", True),  # Unix spelling
        ("pwd", True),  # short spelling
        ("keyPassphrase", True),  # passphrase of a key file
        ("auth_token", True),  # bearer tokens
        ("client_secret", True),  # OAuth
        ("credentials", True),  # plural
        ("private_key", True),  # PEM bodies
        ("access_key_id", True),  # cloud access key pair
    ],
)
def test_looks_secret(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


@pytest.fixture
def cipher() -> SecretCipher:
    return SecretCipher([SecretCipher.generate_key()])


BODY = {
    "service": "billing",
    "max_tokens": 512,
    "database": {"host": "db", "password": "hunter2"},
    "upstreams": [{"url": "https://a", "api_key": "sk-live-1"}, {"url": "https://b", "api_key": None}],
}


def test_find_secret_paths_in_an_untyped_body() -> None:
    assert find_secret_paths(BODY) == {("database", "password"), ("upstreams", 0, "api_key")}


def test_find_secret_paths_in_a_model_uses_secret_types_and_names() -> None:
    class Upstream(BaseModel):
        url: str
        credential: SecretStr  # a SecretStr field

    class Settings(BaseModel):
        name: str
        signing: SecretStr  # a secret by type, not by name
        upstreams: list[Upstream]
        db_password: str  # a secret by name, not by type

    model = Settings(
        name="x",
        signing=SecretStr("s"),
        upstreams=[Upstream(url="u", credential=SecretStr("c"))],
        db_password="p",
    )
    assert find_secret_paths(model) == {("signing",), ("upstreams", 0, "credential"), ("db_password",)}


def test_seal_and_unseal_round_trip(cipher: SecretCipher) -> None:
    sealed = seal(BODY, find_secret_paths(BODY), cipher)
    text = canonical_json(sealed)
    assert "hunter2" not in text
    assert "sk-live-1" not in text
    assert is_sealed(sealed["database"]["password"])
    assert sealed["upstreams"][1]["api_key"] is None  # nothing to seal
    assert sealed["max_tokens"] == 512
    assert unseal(json.loads(text), cipher) == BODY
    assert BODY["database"]["password"] == "hunter2"  # the input is not modified


def test_sealing_twice_is_a_no_op(cipher: SecretCipher) -> None:
    paths = find_secret_paths(BODY)
    once = seal(BODY, paths, cipher)
    assert seal(once, paths, cipher) == once


def test_non_string_secret_values_round_trip(cipher: SecretCipher) -> None:
    body = {"token": {"id": 7, "scopes": ["read", "write"]}}
    assert unseal(seal(body, {("token",)}, cipher), cipher) == body


def test_seal_without_a_key_refuses_to_store_a_secret_plain() -> None:
    with pytest.raises(SecretKeyError, match=r"database\.password"):
        seal(BODY, {("database", "password")}, None)


def test_unseal_without_a_key_raises(cipher: SecretCipher) -> None:
    sealed = seal(BODY, find_secret_paths(BODY), cipher)
    with pytest.raises(SecretKeyError, match="no encryption key"):
        unseal(sealed, None)


def test_unseal_with_the_wrong_key_raises(cipher: SecretCipher) -> None:
    sealed = seal(BODY, find_secret_paths(BODY), cipher)
    other = SecretCipher([SecretCipher.generate_key()])
    with pytest.raises(SecretKeyError, match="cannot be decrypted"):
        unseal(sealed, other)


def test_a_tampered_token_raises(cipher: SecretCipher) -> None:
    sealed = seal({"token": "t"}, {("token",)}, cipher)
    token = sealed["token"][SEALED_MARKER]
    tampered = {"token": {SEALED_MARKER: token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")}}
    with pytest.raises(SecretKeyError):
        unseal(tampered, cipher)


def test_key_rotation_reads_old_tokens_with_the_old_key_listed_second() -> None:
    old_key, new_key = SecretCipher.generate_key(), SecretCipher.generate_key()
    sealed_with_old = seal({"token": "t"}, {("token",)}, SecretCipher([old_key]))
    rotated = SecretCipher.from_env_value(f"{new_key}, {old_key}")
    assert unseal(sealed_with_old, rotated) == {"token": "t"}


@pytest.mark.parametrize(
    "keys",
    [
        [],  # no key at all
        ["not-a-fernet-key"],  # wrong length / alphabet
    ],
)
def test_invalid_keys_are_refused(keys: list[str]) -> None:
    with pytest.raises(SecretKeyError):
        SecretCipher(keys)


def test_key_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "confledger.key"
    with pytest.raises(SecretKeyError, match="does not exist"):
        SecretCipher.from_key_file(path, create=False)
    first = SecretCipher.from_key_file(path, create=True)
    assert path.stat().st_mode & 0o777 == 0o600
    second = SecretCipher.from_key_file(path, create=False)
    assert second.decrypt(first.encrypt("x")) == "x"


def test_redact_masks_secret_paths_and_sealed_values(cipher: SecretCipher) -> None:
    paths = find_secret_paths(BODY)
    shown = redact(BODY, paths)
    assert shown["database"]["password"] == REDACTED
    assert shown["upstreams"][0]["api_key"] == REDACTED
    assert shown["upstreams"][1]["api_key"] is None  # absent stays absent
    assert shown["max_tokens"] == 512
    assert BODY["database"]["password"] == "hunter2"  # the input is not modified
    # A body read back without its key still shows no token and no plain value.
    sealed = seal(BODY, paths, cipher)
    assert redact(sealed, ()) == shown


def test_redact_ignores_paths_that_are_not_in_the_body() -> None:
    assert redact({"a": 1}, {("missing", "password"), ("a", 0)}) == {"a": 1}


def test_everything_under_a_secret_named_key_is_one_secret() -> None:
    # An untyped config groups credentials; every part of the group is sealed and redacted.
    body = {"credentials": {"user": "svc", "pass": "hunter22"}, "db": {"passwords": ["a1b2c3"]}, "name": "x"}
    assert find_secret_paths(body) == {("credentials",), ("db", "passwords")}
    assert redact(body, find_secret_paths(body)) == {
        "credentials": "**********",
        "db": {"passwords": "**********"},
        "name": "x",
    }
