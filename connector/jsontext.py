"""JSON text read and written with orjson, several times the standard library's speed, falling back to the
standard library for what orjson refuses but JSON allows: an escaped lone surrogate (`"\\ud83d"`, half of an
emoji cut by a client), which Shopify can carry in a note or a name and which must not stall a backfill."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(text: str | bytes) -> Any:
    """The value of a JSON text; ValueError when it is not one."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # raises ValueError (JSONDecodeError) when it is really not JSON


# What the standard library refuses to encode (datetimes, dataclasses) orjson refuses too, so a value that is not
# made of JSON types raises TypeError either way instead of being stored as text by one and not the other.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(value: Any) -> str:
    """Compact JSON text of a value made of JSON types (a lone surrogate is escaped, as JSON allows)."""
    return dumpb(value).decode()


def dumpb(value: Any) -> bytes:
    """`dumps` as UTF-8 bytes, without an intermediate string (a request body of several megabytes)."""
    try:
        return orjson.dumps(value, option=_STRICT)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def embedded(text: str) -> Any:
    """JSON text (as this module wrote it) placed in a value as it is: `dumpb` copies it into its output without
    reading it, so that a body stored as text goes out without being parsed and encoded again. Only for text
    known to be JSON, and only in values `dumpb` encodes with orjson (its fallback cannot embed it)."""
    return orjson.Fragment(text)
