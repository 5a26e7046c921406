"""Reading and writing one mParticle batch as JSON, with 64-bit integers exact.

orjson does the work: it keeps integers as Python ints, keeps key order, and
writes compact UTF-8, so a batch that goes in and out untouched is written back
with the same keys in the same order and the same values. Numbers that came as
strings ("1595542763908") stay strings; `as_int` reads both forms.

orjson reads an integer beyond 64 bits (below -2**63 or above 2**64 - 1) as a
float, so a document holding one is read by the standard library's decoder
instead, which keeps every integer exact (and is about twice as slow). Either
way, what cannot be written back as valid JSON in UTF-8 is rejected: NaN,
Infinity, numbers beyond a double, lone surrogates, and values nested deeper than
`MAX_NESTING_DEPTH`. Floats are written in their shortest round-trip form (1e-7,
where the standard library wrote 1e-07).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import orjson

# orjson reads integers in this range exactly. One outside has 20 or more digits,
# or is "-9" and 18 more digits. Both are found by C-speed searches over the text
# with every digit made "0" (a regex scan would cost more than orjson's whole
# parse), and each find is then read as an integer. A find inside a string or a
# fraction only sends the document down the exact path, which reads it the same.
_ORJSON_INTEGERS = range(-(2**63), 2**64)
_ALL_DIGITS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS = b"0" * 20
_DIGIT_RUN = re.compile(rb"-?[0-9]+")
_MINUS_NINE_AND_18 = re.compile(rb"-9[0-9]{18}")  # a literal start: a C-speed search
# Real batches nest about six levels (batch, events, event, data, attributes).
# orjson writes at most 254 levels and Python's decoders and pickling recurse
# about 1,000 deep; 100 is far above real data and well inside all of them.
MAX_NESTING_DEPTH = 100
# An integer this long cannot be an int64; reading it as a number is pointless
# (and Python refuses to read one of over 4,300 digits).
_MAX_INTEGER_DIGITS = 24
_EXACT_DECODER = json.JSONDecoder(parse_constant=lambda name: _reject_constant(name))
_EXACT_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class BadRecord(ValueError):
    """A record that cannot be forwarded; `reason` goes to the dead-letter output."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def decode(raw: str | bytes) -> Any:
    """Parses one JSON document; raises BadRecord saying why it cannot be read."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="surrogatepass")
    value = _NOT_READ
    if not _has_wide_integer(raw):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the exact decoder below says why, in the same words as for any record
    if value is _NOT_READ:
        value = _decode_exact(raw)
    if raw.count(b"{") + raw.count(b"[") > MAX_NESTING_DEPTH:  # else it cannot nest deeper
        depth = nesting_depth(value)
        if depth > MAX_NESTING_DEPTH:
            raise BadRecord(f"nested {depth} levels deep, over the limit of {MAX_NESTING_DEPTH}")
    return value


_NOT_READ = object()


def nesting_depth(value: Any) -> int:
    """How many arrays and objects deep a decoded value goes (a scalar is 0).

    A level at a time, in comprehensions over exact types (what JSON decoders make):
    a quarter of the time of a walk with a stack of (item, depth) pairs, which took a
    fifth of a worker's bundle time on batches of 40-80 events (README,
    Performance)."""
    depth = 0
    level = [value] if type(value) in _CONTAINERS else []
    while level:
        depth += 1
        level = [child for item in level
                 for child in (item.values() if type(item) is dict else item)
                 if type(child) in _CONTAINERS]
    return depth


_CONTAINERS = (dict, list)


def _has_wide_integer(raw: bytes) -> bool:
    """Whether the text holds a run of digits that, as an integer, leaves orjson's range."""
    for start in _long_digit_runs(raw, raw.translate(_ALL_DIGITS_ZERO)):
        digits = _DIGIT_RUN.match(raw, start).group()
        if len(digits) > _MAX_INTEGER_DIGITS or int(digits) not in _ORJSON_INTEGERS:
            return True
    return False


def _long_digit_runs(raw: bytes, zeroed: bytes) -> Iterator[int]:
    """Where each run of 20 or more digits starts (at its "-", if one comes before it),
    and each "-9" with 18 more digits (a 19-digit integer below int64's range starts
    so): C-speed searches, the second one regex over the text as it is (many a "-9"
    starts a UUID's group, too many to look at one by one in Python)."""
    at = zeroed.find(_TWENTY_DIGITS)
    while at != -1:
        yield at - 1 if at and raw[at - 1] == ord("-") else at
        at = zeroed.find(_TWENTY_DIGITS, _DIGIT_RUN.match(raw, at).end())
    for found in _MINUS_NINE_AND_18.finditer(raw):
        yield found.start()


def _decode_exact(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord(f"not UTF-8 text: {err}") from err
    try:
        value = _EXACT_DECODER.decode(text.strip())
    except ValueError as err:  # also an integer of over 4,300 digits
        raise BadRecord(f"not JSON: {err}") from err
    except RecursionError:
        raise BadRecord(f"nested over the limit of {MAX_NESTING_DEPTH} levels") from None
    try:
        _EXACT_ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRecord(f"not valid Unicode: a string holds a lone surrogate ({err})") from err
    except ValueError as err:  # 1e400 reads as infinity, which JSON cannot hold
        raise BadRecord(f"not JSON: a number out of range ({err})") from err
    except RecursionError:
        raise BadRecord(f"nested over the limit of {MAX_NESTING_DEPTH} levels") from None
    return value


def encode(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes, characters kept as they are (no \\u escapes)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, from the exact decoder
        return _encode_exactly(value)


def _encode_exactly(value: Any) -> bytes:
    """`encode` of a value holding an integer beyond 64 bits: that integer in its
    digits, everything else as orjson writes it, so that a number is written the same
    with or without such an integer beside it (floats as `0.000036`, not `3.6e-05`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    if isinstance(value, dict):
        return b"{" + b",".join(orjson.dumps(key) + b":" + encode(item)
                                for key, item in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(item) for item in value) + b"]"
    return orjson.dumps(value)


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
        if digits.isdigit() and digits.isascii() and len(digits) <= _MAX_INTEGER_DIGITS:
            return int(text)
        return None
    if isinstance(value, float) and value.is_integer():
        # A double that a sender rounded; its integer value is all that is left.
        return int(value)
    return None
