"""``json_refusal``: which request bodies the config API parses, and the reason it gives for the rest."""

from __future__ import annotations

import pytest

from confledger.api.limits import json_refusal

# (body, a phrase the reason must hold, or None for a body that is parsed)
BODIES = [
    (b"", None),  # no body: the route's defaults apply
    (b"{}", None),
    (b'{"force": true, "config_source": "conf/app.yaml"}', None),
    ('{"config_source": "caf\u00e9/\U0001f600.yaml"}'.encode(), None),  # any real text, astral included
    (b'{"config_source": "\\ud83d\\ude00"}', None),  # an escaped surrogate pair is one real character
    (b"[1e308, -0.0, 12345678901234567890]", None),  # large finite numbers are numbers
    (b'{"force": NaN}', "NaN"),
    (b'{"force": Infinity}', "Infinity"),
    (b'{"force": -Infinity}', "-Infinity"),
    (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
    (b'{"a": ["ok", {"deeper": "\\udc00"}]}', "lone UTF-16 surrogate"),  # found at any depth
    (b'{"\\udbff": 1}', "lone UTF-16 surrogate"),  # in a key
    (b'"\xed\xa0\x80"', "lone UTF-16 surrogate"),  # encoded as UTF-8 bytes
    (b"\xff\xfe{", "not UTF-8"),
    (b'{"force": tru}', "not JSON"),
    (b"{", "not JSON"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"force": ' + b"9" * 5_000 + b"}", "too many digits"),  # past int()'s digit limit
    (b'{"config_source": "/etc/passwd", "config_source": "config.yaml"}', "a key appears twice"),
    (b'{"a": [{"b": 1, "b": 2}]}', "a key appears twice"),  # at any depth
    (b'{"a": {"b": 1}, "c": {"b": 2}}', None),  # the same key in two objects is no duplicate
]


@pytest.mark.parametrize(("body", "reason"), BODIES)
def test_which_bodies_are_json_text(body: bytes, reason: str | None) -> None:
    refusal = json_refusal(body)
    if reason is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert reason in refusal


def test_a_reason_never_quotes_the_body() -> None:
    marker = "sk-live-MARKER"
    for body in (
        f'{{"{marker}": NaN}}'.encode(),
        f'{{"x": "{marker}\\ud800"}}'.encode(),
        f'{{"x": "{marker}"'.encode(),
    ):
        refusal = json_refusal(body)
        assert refusal is not None
        assert marker not in refusal
