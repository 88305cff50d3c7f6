"""JSON text: orjson's speed, and nothing JSON allows is refused (a lone surrogate must not stall a backfill)."""

from __future__ import annotations

import pytest

from connector import jsontext


def test_an_escaped_lone_surrogate_is_read_and_written_back_as_json() -> None:
    value = jsontext.loads('{"note": "half an emoji \\ud83d", "n": 1}')
    assert value == {"note": "half an emoji \ud83d", "n": 1}
    assert jsontext.loads(jsontext.dumps(value)) == value


def test_ordinary_values_round_trip_compactly_and_non_json_is_refused() -> None:
    assert jsontext.dumps({"a": [1, "é", None, True]}) == '{"a":[1,"é",null,true]}'
    with pytest.raises(ValueError):
        jsontext.loads('{"a": ')
