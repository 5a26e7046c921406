"""JSON in and out (`transforms.rules.batch_json`): exact int64 and beyond, key order kept,
decode errors that say why."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLE_BATCH
from transforms.rules import batch_json

BIG = 9223372036854775807  # int64 max: a double would round it


def test_int64_numbers_and_strings_round_trip_exactly():
    raw = f'{{"mpid":{BIG},"batch_id":-{BIG},"events":[{{"data":{{"event_id":"{BIG}"}}}}]}}'
    batch = batch_json.decode(raw)
    assert batch["mpid"] == BIG and isinstance(batch["mpid"], int)
    assert batch_json.encode(batch) == raw.encode()


@pytest.mark.parametrize("number", [2**64 - 1, -(2**63), 2**64, -(2**63) - 1, 10**30, -(10**25)])
def test_integers_beyond_64_bits_stay_exact(number):
    # At the edges of 64 bits and beyond them (which orjson would read as floats).
    raw = f'{{"custom_attributes":{{"n":{number}}},"events":[]}}'
    batch = batch_json.decode(raw)
    read = batch["custom_attributes"]["n"]
    assert read == number and isinstance(read, int)
    assert batch_json.encode(batch) == raw.encode()


def test_every_integer_near_and_beyond_64_bits_reads_as_the_standard_library_reads_it():
    edges = [2**63, 2**64, 10**19, 10**20]
    numbers = {sign * (edge + delta) for edge in edges for delta in (-2, -1, 0, 1)
               for sign in (1, -1)}
    rng = random.Random(7)
    numbers |= {rng.randrange(-(10**22), 10**22) for _ in range(2000)}
    for number in sorted(numbers):
        for raw in (f'{{"n":{number},"s":"{number}"}}', f'[1,"-9",{number}.5,{number}]'):
            decoded = batch_json.decode(raw)
            expected = json.loads(raw)
            assert decoded == expected and [type(v) for v in _values(decoded)] == [
                type(v) for v in _values(expected)
            ], raw


@settings(max_examples=500)
@given(st.lists(st.integers(min_value=-(10**25), max_value=10**25)
                | st.text(alphabet="-0129", max_size=30), max_size=6))
def test_integers_and_strings_of_digits_and_dashes_read_as_the_standard_library_reads_them(
    values,
):
    """The 64-bit check finds its candidates by searching the text: "--9" and 18
    digits in a string once made it fail (AttributeError) instead of reading it."""
    for raw in (json.dumps(values), '["--9000000000000000000"]', '{"a":"x--9223372036854775809"}'):
        decoded = batch_json.decode(raw)
        expected = json.loads(raw)
        assert decoded == expected and [type(v) for v in _values(decoded)] == [
            type(v) for v in _values(expected)]


def _values(document):
    return list(document.values()) if isinstance(document, dict) else document


def test_untouched_batch_keeps_key_order_and_values():
    text = SAMPLE_BATCH.read_text()
    batch = batch_json.decode(text)
    expected = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    assert batch_json.encode(batch) == expected.encode()
    assert list(batch) == list(json.loads(text))


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("not json", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"a": 1} trailing', "not JSON"),
        # Each would be written back as invalid JSON or fail to encode as UTF-8.
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": -Infinity}', "-Infinity is not a JSON number"),
        ('{"a": 1e400}', "number out of range"),
        ('{"a": "\\ud800"}', "lone surrogate"),
        ('{"a": "\\ud800", "n": 123456789012345678901234}', "lone surrogate"),
    ],
)
def test_decode_errors_say_why(raw, reason):
    with pytest.raises(batch_json.BadRecord, match=reason):
        batch_json.decode(raw)


@pytest.mark.parametrize(
    "value, expected",
    [
        (1595542763908, 1595542763908),
        ("1595542763908", 1595542763908),
        (f"-{BIG}", -BIG),
        (" 42 ", 42),
        (1.5e12, 1_500_000_000_000),
        (1.5, None),
        ("12ab", None),
        ("", None),
        (None, None),
        (True, None),
        ("١٢٣", None),  # non-ASCII digits are not a timestamp
        ("-1", -1),
        ("+12", 12),
        ("X12", None),
        ("1" * 24, int("1" * 24)),  # as long as a number is read
        ("1" * 25, None),
    ],
)
def test_as_int(value, expected):
    assert batch_json.as_int(value) == expected


# The integration page's table (README, Options), written out here rather than taken
# from transforms.rules.settings, so that a mistake in the implementation's table shows.


def test_a_number_is_written_the_same_beside_an_integer_beyond_64_bits():
    """The exact encoder writes every other value as orjson does (floats as 0.000036, not
    the standard library's 3.6e-05), so a field's bytes do not depend on its neighbours
    (hypothesis found 3.611638368177055e-05 beside 2**65 written two ways)."""
    neighbours = {"small": [3.611638368177055e-05, 1e300, 0.1, -0.0, "é\n", None, True]}
    alone = batch_json.encode(neighbours)
    beside = batch_json.encode({**neighbours, "big": 2**65})
    assert beside == alone[:-1] + b',"big":36893488147419103232}'
    assert batch_json.decode(beside)["big"] == 2**65


def _depth(value) -> int:
    """Nesting depth as its definition reads: one more than the deepest child."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=40,
)


@given(_JSON_VALUES)
def test_nesting_depth_is_how_deep_arrays_and_objects_go(value):
    assert batch_json.nesting_depth(value) == _depth(value)


@pytest.mark.parametrize("levels, accepted", [(100, True), (101, False)])
def test_a_record_may_nest_100_levels_deep_and_no_more(levels, accepted):
    # More brackets than levels: the depth, not the count of brackets, decides.
    raw = '{"a":' * (levels - 2) + '[1, "]]]", {}, {}, []]' + "}" * (levels - 2)
    if accepted:
        assert batch_json.nesting_depth(batch_json.decode(raw)) == levels
    else:
        with pytest.raises(batch_json.BadRecord, match="nested 101 levels deep"):
            batch_json.decode(raw)


WIDE, LOW, FITS = 2**64, -(2**63) - 1, 2**64 - 1  # 20 digits; "-9" and 18; 20 digits


@pytest.mark.parametrize("values", [
    [FITS, WIDE, FITS], [FITS, FITS, WIDE], [LOW, -9], [-9, LOW, -9], [-9, -9, LOW],
    [FITS, "-9", WIDE, -9, LOW],
])
def test_every_integer_beyond_64_bits_is_read_exactly_wherever_it_is(values):
    """orjson reads an integer beyond its range as a float, silently: each of them must
    be found, whatever comes before or after it."""
    decoded = batch_json.decode(json.dumps(values))
    assert decoded == values and [type(v) for v in decoded] == [type(v) for v in values]


def test_integers_beyond_64_bits_are_written_in_their_digits_among_other_values():
    assert batch_json.encode([WIDE, 1, "x", 0.5, None]) == b'[%d,1,"x",0.5,null]' % WIDE
    assert batch_json.encode({"a": [LOW], "b": True}) == b'{"a":[%d],"b":true}' % LOW


def test_a_text_with_a_lone_surrogate_is_a_bad_record_whichever_way_it_comes():
    for raw in (r'"\ud800"', "\"\ud800\"", b'"\xed\xa0\x80"'):  # escaped, in a str, in bytes
        with pytest.raises(batch_json.BadRecord):
            batch_json.decode(raw)


def test_nesting_too_deep_for_the_exact_decoder_is_a_bad_record():
    raw = "[" * 5000 + str(WIDE) + "]" * 5000  # an integer beyond 64 bits: the exact path
    with pytest.raises(batch_json.BadRecord, match="^nested over the limit of 100 levels$"):
        batch_json.decode(raw)


def test_arrays_alone_may_not_nest_deeper_than_objects_may():
    with pytest.raises(batch_json.BadRecord, match="nested 101 levels deep"):
        batch_json.decode("[" * 101 + "]" * 101)
    assert batch_json.nesting_depth(batch_json.decode("[" * 100 + "]" * 100)) == 100
