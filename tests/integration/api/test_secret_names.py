"""Secrets named as people name them in plain ``str`` fields (``smtp_pass``, ``STRIPE_KEY``, a database URL
with its password): sealed at rest and hidden in every answer, with the config hash they always had.

The hash rules (which values a hash takes as keyed digests) are fixed by hash scheme 2; the names above
came later, as sealing rules: their values are sealed under a marker of their own and hashed in the clear
(scheme 3), so a config's hash is what the release before gave it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from confledger.api.lifecycle import ConfigLifecycle, setup_configuration_lifecycle
from confledger.store import SecretCipher
from confledger.store.canonical import config_hash
from confledger.store.validation import dump_revealed
from tests.integration.api.service_harness import ADMIN_TOKEN, PREFIX, is_postgres, stored_rows_text

SMTP_PASS = "smtp-Pass-7f3e91"
STRIPE_KEY = "sk_live_51HxQ8a2b3c4d"
REPLICA_PASS = "Replica-Pass-88ab"
NEW_SMTP_PASS = "smtp-Pass-rotated-2c4d"
EVERY_SECRET = (SMTP_PASS, STRIPE_KEY, REPLICA_PASS, NEW_SMTP_PASS)
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Mailer(BaseModel):
    host: str = "smtp.example.com"
    smtp_pass: str


class ShopConfig(BaseModel):
    name: str
    replica_url: str
    stripe_key: str
    mailer: Mailer


def body(smtp_pass: str = SMTP_PASS) -> str:
    return (
        "name: shop\n"
        f"replica_url: postgresql://shop:{REPLICA_PASS}@replica:5432/shop\n"
        f"stripe_key: {STRIPE_KEY}\n"
        f"mailer:\n  smtp_pass: {smtp_pass}\n"
    )


@contextmanager
def running(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, ConfigLifecycle]]:
    source = tmp_path / "config.yaml"
    if not source.exists():
        source.write_text(body(), encoding="utf-8")
    app = FastAPI()
    lifecycle = setup_configuration_lifecycle(
        app,
        config_model=ShopConfig,
        config_source=source,
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        enable_signal_handler=False,
        encryption_key=SecretCipher.generate_key() if is_postgres(database_url) else None,
    )
    with TestClient(app) as client:
        yield client, lifecycle


def test_secrets_in_plain_fields_are_sealed_hidden_and_keep_their_hash(
    tmp_path: Path, database_url: str
) -> None:
    answers: list[str] = []
    with running(tmp_path, database_url) as (client, lifecycle):
        reloader = lifecycle.reloader
        assert reloader is not None
        first = reloader.current_hash
        assert first is not None
        # No value here is digested by the hash rules: the hash is the plain body's, as it always was.
        assert first == config_hash(dump_revealed(reloader.get_config()))

        current = client.get(f"{PREFIX}/current", headers=HEADERS)
        assert current.status_code == 200
        shown = current.json()["config"]
        assert shown["stripe_key"] == shown["replica_url"] == shown["mailer"]["smtp_pass"] == "**********"
        assert shown["mailer"]["host"] == "smtp.example.com"
        answers.append(current.text)

        (tmp_path / "config.yaml").write_text(body(NEW_SMTP_PASS), encoding="utf-8")
        rotated = client.post(f"{PREFIX}/reload", json={}, headers=HEADERS)
        assert rotated.json()["success"] is True
        assert rotated.json()["changes_applied"] == ["mailer.smtp_pass"]  # a changed secret is a change
        second = reloader.current_hash
        assert second is not None
        assert second != first
        answers.append(rotated.text)
        diff = client.get(f"{PREFIX}/diff", params={"from": first, "to": second}, headers=HEADERS)
        assert diff.json()["changes"][0]["new"] == "**********"
        answers.append(diff.text)
        for path in (f"/versions/{first}", f"/versions/{second}", "/timeline", "/history", "/backups"):
            answer = client.get(f"{PREFIX}{path}", headers=HEADERS)
            assert answer.status_code == 200, (path, answer.text)
            answers.append(answer.text)

        back = client.post(f"{PREFIX}/rollback", json={"target_hash": first}, headers=HEADERS)
        assert back.json()["success"] is True
        answers.append(back.text)
        # The sealed values came back whole from the log.
        assert reloader.get_config().mailer.smtp_pass == SMTP_PASS
        assert reloader.get_config().replica_url.endswith(f":{REPLICA_PASS}@replica:5432/shop")

    at_rest = stored_rows_text(database_url)
    for secret in EVERY_SECRET:
        assert secret not in at_rest, secret
        for answer in answers:
            assert secret not in answer, secret
