"""Reading and writing one mParticle batch as JSON, with 64-bit integers exact.

The stdlib decoder keeps integers as Python ints (never through a float) and
keeps key order, so a batch that goes in and out untouched is written back with
the same keys in the same order and the same values. Numbers that came as
strings ("1595542763908") stay strings; `as_int` reads both forms.
"""

from __future__ import annotations

import json
from typing import Any

_DECODER = json.JSONDecoder()
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class BadRecord(ValueError):
    """A record that cannot be forwarded; `reason` goes to the dead-letter output."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode(raw: str | bytes) -> Any:
    """Parses one JSON document; raises BadRecord with the decoder's message."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRecord(f"not UTF-8 text: {err}") from err
    try:
        return _DECODER.decode(raw.strip())
    except ValueError as err:
        raise BadRecord(f"not JSON: {err}") from err


def encode(value: Any) -> str:
    """Compact JSON, UTF-8 characters kept as they are (no \\u escapes)."""
    return _ENCODER.encode(value)


def as_int(value: Any) -> int | None:
    """An int64 field that may be a JSON number or a string of digits; None if unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "+-":
            digits = text[1:]
        else:
            digits = text
        if digits.isdigit() and digits.isascii():
            return int(text)
        return None
    if isinstance(value, float) and value.is_integer():
        # A double that a sender rounded; its integer value is all that is left.
        return int(value)
    return None
