"""store.secrets: which names are secret, sealing them at rest, and redacting them for display."""

from __future__ import annotations

import enum
import json
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, SecretBytes, SecretStr

from confledger.store import secrets
from confledger.store.canonical import canonical_json
from confledger.store.errors import SecretKeyError
from confledger.store.secrets import (
    DIGESTED_SECRET,
    NOT_SECRET,
    REDACTED,
    SEALED_MARKER,
    SEALED_SECRET,
    SEALED_UNDIGESTED_MARKER,
    SecretCipher,
    classify_secrets,
    digested_paths,
    find_secret_paths,
    holds_password,
    is_sealed,
    looks_secret,
    redact,
    seal,
    sealed_paths,
    secret_kind,
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
        ("DB_PASS", True),  # a password's short spelling, as the name's last part
        ("smtpPw", True),  # and its shorter one
        ("pass_rate", False),  # but not "pass" that is not the last part
        ("db_pass_file", False),  # a path to one
        ("STRIPE_KEY", True),  # a vendor's key: a name ending in "key" holds one...
        ("signing_key", True),
        ("api_keys", True),  # ... or several
        ("cache_key", False),  # ... unless it names a key of data
        ("partition_key", False),
        ("publishable_key", False),  # public by definition
        ("key", False),  # a key/value pair's key
        ("keys", False),
        ("ACCESSTOKEN", True),  # one upper-case word
    ],
)
def test_looks_secret(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("password", DIGESTED_SECRET),  # the hash rules (scheme 2) never change: still digested
        ("api_key", DIGESTED_SECRET),
        ("db_pass", SEALED_SECRET),  # the sealing rules came later: hashed in the clear
        ("stripe_key", SEALED_SECRET),
        ("host", NOT_SECRET),
    ],
)
def test_which_names_the_hash_digests(name: str, kind: int) -> None:
    assert secret_kind(name) == kind


@pytest.mark.parametrize(
    ("text", "holds"),
    [
        ("postgresql://app:hunter2@db:5432/prod", True),  # a DSN with its password
        ("redis://:hunter2@cache:6379/0", True),  # a password with no user
        ("host=db user=app password=hunter2", True),  # libpq keywords
        ("postgresql://app@db/prod", False),  # a user, no password
        ("https://example.com/a:b@c", False),  # "@" in the path is no user part
        ("ops@example.com", False),  # an address
        ("mailto:ops:x@example.com", False),  # no authority
        ("password=", False),  # nothing after it
    ],
)
def test_text_that_carries_a_password(text: str, holds: bool) -> None:
    assert holds_password(text) is holds


def test_classify_secrets_says_which_the_hash_digests() -> None:
    class Typed(BaseModel):
        token: SecretStr = SecretStr("t")
        smtp_pass: str = "s"

    body = {
        "database": {"url": "postgresql://app:pw@db/prod", "password": "p"},
        "stripe_key": "sk_live",
        "mirrors": ["https://u:pw@mirror", "https://mirror2"],
        "typed": Typed(),
        "api_keys": ["k1", "k2"],  # a list under a sealing name: sealed whole
        # Under a sealing name, a secret of the hash rules stays one value of its own, as before.
        "auth_keys": {"password": "p2", "note": "n"},
    }
    assert classify_secrets(body) == {
        ("database", "url"): False,
        ("database", "password"): True,
        ("stripe_key",): False,
        ("mirrors", 0): False,
        ("typed", "token"): True,
        ("typed", "smtp_pass"): False,
        ("api_keys",): False,
        ("auth_keys", "password"): True,
    }
    assert digested_paths(classify_secrets(body)) == {
        ("database", "password"),
        ("typed", "token"),
        ("auth_keys", "password"),
    }


def test_a_secret_the_hash_takes_in_the_clear_is_sealed_under_its_own_marker(cipher: SecretCipher) -> None:
    body = {"db_pass": "hunter2", "password": "p", "host": "db"}
    sealed = seal(body, [("db_pass",), ("password",)], cipher, undigested=[("db_pass",)])
    assert set(sealed["db_pass"]) == {SEALED_UNDIGESTED_MARKER}
    assert set(sealed["password"]) == {SEALED_MARKER}
    assert "hunter2" not in json.dumps(sealed)
    assert sealed_paths(sealed) == [("db_pass",), ("password",)]
    assert sealed_paths(sealed, digested_only=True) == [("password",)]
    assert unseal(sealed, cipher) == body
    assert redact(sealed, []) == {"db_pass": REDACTED, "password": REDACTED, "host": "db"}


def test_without_a_key_a_secret_the_hash_takes_in_the_clear_stays_plain() -> None:
    # As every body held it before the sealing rules knew its name: refusing it would refuse configs
    # that stored fine the day before. One the hash digests is still refused.
    body = {"db_pass": "hunter2"}
    assert seal(body, [("db_pass",)], None, undigested=[("db_pass",)]) == body
    with pytest.raises(SecretKeyError):
        seal({"password": "p"}, [("password",)], None)


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


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("not-a-fernet-key", "encryption key is not a valid Fernet key"),
        # A valid key first (a fixed one: generated here it would name a different test in each worker).
        (f"{'A' * 43}=,not-a-fernet-key", "key 2 of 2 is not a valid Fernet key"),
        (" , ", "no encryption key given"),
    ],
    ids=["one key", "the second of two", "none"],
)
def test_a_bad_encryption_key_setting_is_named_in_the_error(value: str, said: str) -> None:
    with pytest.raises(SecretKeyError) as refused:
        SecretCipher.from_env_value(value)
    assert str(refused.value).startswith(f"CONFLEDGER_ENCRYPTION_KEY: {said}")
    assert "not-a-fernet-key" not in str(refused.value)


def _first_starts_at_once(path: Path, starters: int) -> tuple[list[SecretCipher], list[BaseException]]:
    start = threading.Barrier(starters)
    ciphers: list[SecretCipher] = []
    failures: list[BaseException] = []

    def first_start() -> None:
        start.wait()
        try:
            ciphers.append(SecretCipher.from_key_file(path, create=True))
        except BaseException as exc:  # the test reports whatever escaped
            failures.append(exc)

    threads = [threading.Thread(target=first_start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ciphers, failures


def test_first_starts_at_one_moment_all_use_the_one_key_file_made(tmp_path: Path) -> None:
    # Two workers' (or two services') first start on a fresh log: exactly one key is made and every
    # starter reads that one, whole; none fails, none reads a file still being written.
    for attempt in range(20):
        path = tmp_path / f"attempt-{attempt}.key"
        ciphers, failures = _first_starts_at_once(path, 4)
        assert failures == []
        token = ciphers[0].encrypt("secret")
        assert all(cipher.decrypt(token) == "secret" for cipher in ciphers)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Nothing written aside is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"attempt-{n}.key" for n in range(20))


def test_a_key_file_that_cannot_be_made_is_a_key_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "missing-directory" / "confledger.db.key"
    with pytest.raises(SecretKeyError, match=f"cannot create encryption key file {path}: FileNotFoundError"):
        SecretCipher.from_key_file(path, create=True)


def test_a_key_file_that_holds_no_key_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "confledger.db.key"
    path.write_text("not-a-fernet-key\n", encoding="ascii")
    with pytest.raises(SecretKeyError, match=f"encryption key file {path}: .*not a valid Fernet key"):
        SecretCipher.from_key_file(path, create=False)


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


# --- find_secret_paths: the fast walk finds what the plain walk found -----------------------------------


def _hash_rules(name: str) -> bool:
    return secret_kind(name) == DIGESTED_SECRET


def _reference_secret_paths(config: Any) -> set[tuple[str | int, ...]]:
    """The secrets a config hash digests, found as the first walk found them: isinstance checks on every
    node, model fields asked each time, and only the names of the hash rules (the sealing rules that
    came later must not change what a hash digests)."""
    found: set[tuple[str | int, ...]] = set()

    def walk(value: Any, path: tuple[str | int, ...], named_secret: bool) -> None:
        if isinstance(value, SecretStr | SecretBytes):
            found.add(path)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), (*path, name), _hash_rules(name))
        elif named_secret and isinstance(value, Mapping | list | tuple) and value:
            found.add(path)
        elif isinstance(value, Mapping):
            for key, child in value.items():
                walk(child, (*path, str(key)), _hash_rules(str(key)))
        elif isinstance(value, list | tuple):
            for index, child in enumerate(value):
                walk(child, (*path, index), named_secret)
        elif named_secret and value is not None and not isinstance(value, bool):
            found.add(path)

    walk(config, (), False)
    return found


class _Label(str):
    pass


class _Level(enum.Enum):
    LOW = 1


class _Inner(BaseModel):
    token: SecretStr | None = None
    host: str = "h"
    password: Any = None  # secret by name, whatever it holds


class _Outer(BaseModel):
    name: str = "x"
    signing: SecretBytes | None = None
    inner: _Inner = _Inner()
    extra: Any = None  # untyped: anything, secret-looking keys included
    items: list[Any] = []


_names = st.sampled_from(
    ["host", "password", "api_key", "token_url", "credentials", "plain", "", "pwd", "db_pass", "api_keys"]
)
_odd_leaves = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1.5,
        "v",
        "pg://u:p@h",
        _Label("l"),
        _Level.LOW,
        b"raw",
        SecretStr("s3"),
        SecretBytes(b"s4"),
    ]
)
_untyped = st.recursive(
    _odd_leaves | st.integers(-2, 2) | st.text(max_size=2),
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(_names | st.integers(0, 2), children, max_size=3)
        | st.dictionaries(_names, children, max_size=2).map(MappingProxyType)
        | st.builds(
            lambda token, password: _Inner(token=token, password=password),
            st.none() | st.just(SecretStr("t0")),
            children,
        )
    ),
    max_leaves=10,
)
_models = st.builds(
    lambda signing, password, extra, items: _Outer(
        signing=signing, inner=_Inner(password=password), extra=extra, items=items
    ),
    st.none() | st.just(SecretBytes(b"sb")),
    _untyped,
    _untyped,
    st.lists(_untyped, max_size=2),
)


@given(_untyped | _models)
def test_the_hash_digests_what_it_digested_before_the_sealing_rules(config: Any) -> None:
    secrets_found = classify_secrets(config)
    assert digested_paths(secrets_found) == _reference_secret_paths(config)
    # Every path the sealing rules add is sealed and hidden, never inside or around a digested one.
    digested = digested_paths(secrets_found)
    for path in set(secrets_found) - digested:
        assert not any(path[: len(other)] == other or other[: len(path)] == path for other in digested)


def test_a_flag_or_nothing_under_a_secret_name_is_no_secret() -> None:
    class Flags(BaseModel):
        password: bool = True
        token: Any = None
        api_key: int = 0

    body = {"password": True, "token": False, "pwd": None, "api_key": 0, "nested": [{"secret": False}]}
    assert find_secret_paths(body) == _reference_secret_paths(body) == {("api_key",)}
    assert find_secret_paths(Flags()) == _reference_secret_paths(Flags()) == {("api_key",)}
    assert find_secret_paths({"db_pass": False, "stripe_key": None}) == set()


def test_a_model_class_whose_fields_were_collected_again_gets_a_new_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _Outer(inner=_Inner(token=SecretStr("t")))
    assert find_secret_paths(config) == {("inner", "token")}
    assert secrets._PLANS[_Outer][0] is _Outer.__pydantic_fields__
    # model_rebuild() that resolves a forward reference puts a new fields mapping on the class.
    monkeypatch.setattr(_Outer, "__pydantic_fields__", dict(_Outer.__pydantic_fields__))
    assert find_secret_paths(config) == {("inner", "token")}
    assert secrets._PLANS[_Outer][0] is _Outer.__pydantic_fields__


def test_plans_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "_MAX_PLANS", 1)
    secrets._PLANS.clear()
    assert find_secret_paths(_Outer(inner=_Inner(token=SecretStr("t")))) == {("inner", "token")}
    assert len(secrets._PLANS) == 1


def test_a_proxy_that_claims_a_model_class_is_walked_as_that_model() -> None:
    real = _Inner(token=SecretStr("t"), password="p")

    class Proxy:
        model_fields = _Inner.model_fields

        @property  # type: ignore[misc]
        def __class__(self) -> type:
            return _Inner

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    proxy = Proxy()
    assert isinstance(proxy, BaseModel)
    assert find_secret_paths(proxy) == _reference_secret_paths(proxy) == {("token",), ("password",)}


def test_redact_hides_what_the_rules_find_in_the_body_without_being_told() -> None:
    # A body stored before a rule knew its name holds the value plain, and no sealed path points at it.
    stored = {"smtp_pass": "hunter2", "replica": "postgresql://app:pw@db/app", "host": "db"}
    assert redact(stored, []) == {"smtp_pass": REDACTED, "replica": REDACTED, "host": "db"}
