"""Dead letters hold the record as it came, whatever stage rejected it, and a
dead-letter file given as input again is read as the records it holds."""

from __future__ import annotations

import gzip
import json

import pytest
from apache_beam import pvalue

from transforms.io.inputs import record_at
from transforms.machinery.merging import Merger
from transforms.machinery.shuffled import NO_DICTIONARY, ShuffledBatch
from transforms.parse import parse_batch
from transforms.rules import batch_json
from transforms.rules.dead_letters import AFTER_SETTINGS, dead_letter, replayed, unexpected
from transforms.values import RawRecord

BATCH = {"mpid": 7, "timestamp_unixtime_ms": 1_700_000_000_000, "events": [
    {"event_type": "custom_event", "data": {"event_id": 1}}]}


def test_a_dead_letter_replays_as_the_record_it_holds():
    for raw in (b'{"a": 1}', b"not json", b"caf\xc3\xa9", b"\xff\xfe not utf-8"):
        letter = json.loads(json.dumps(dead_letter("f.ndjson:3", "parse", "why", raw)))
        assert replayed(letter) == ("f.ndjson:3", raw)
    assert "raw_base64" in dead_letter("f:1", "parse", "why", b"\xff")
    assert replayed({**BATCH}) is None  # a batch is not a dead letter
    for raw in (b"x" * 5_000_000, b"\xff" * 3_000_000):  # kept whole, whatever the size
        assert replayed(json.loads(batch_json.encode(dead_letter("f:1", "parse", "why", raw)))) \
            == ("f:1", raw)
    cut = {"source": "f:1", "stage": "parse", "reason": "why", "raw": "x" * 1024,
           "raw_truncated_from_chars": 5_000_000}  # as version 0.1.0 wrote one
    with pytest.raises(ValueError, match="cut to its first MiB"):
        replayed(cut)
    with pytest.raises(ValueError, match="without its record"):
        replayed(dead_letter("pubsub:9", "merge", "why", None))


PADDING = 'p"\u00e9\n' * 50_000


@pytest.mark.parametrize("raw", [
    batch_json.encode({**BATCH, "padding": PADDING}),  # escaped in the line
    b"\x01" * 200_000,  # not JSON, each byte a six-byte escape in the line
    b"\xff" * 200_000,  # not UTF-8, in the line as text and base64
])
def test_a_record_refused_as_oversize_replays_whole_once_the_limit_is_raised(raw):
    """A dead letter's line is larger than its record; the limit applies to the record."""
    limit = len(raw) - 1
    [letter] = parse_batch(RawRecord("f:1", raw), limit, None)[1]
    assert letter["reason"] == f"record is {len(raw):,} bytes, over --max_batch_bytes={limit:,}"
    line = batch_json.encode(letter)
    again = parse_batch(RawRecord("dead:1", line), limit, None)[1]
    assert [a["reason"] for a in again] == [letter["reason"]]  # the record's size, not the line's
    assert replayed(again[0]) == ("dead:1 (dead letter of f:1)", raw)
    arrived, letters, _ = parse_batch(RawRecord("dead:1", line), len(raw), None)
    if raw.startswith(b"{"):
        assert letters == [] and arrived.batch["padding"] == PADDING
    else:  # its own fault is all that is left
        [fault] = letters
        assert fault["source"] == "dead:1 (dead letter of f:1)"
        assert fault["reason"].startswith(("not JSON", "not UTF-8")), fault["reason"]


def test_a_line_too_long_to_hold_a_record_that_fits_is_refused_unread():
    line = batch_json.encode(dead_letter("f:1", "parse", "why", b"x" * 10_000))
    limit = (len(line) - 64 * 1024) // 6 - 1
    [letter] = parse_batch(RawRecord("dead:1", line), limit, None)[1]
    assert letter["source"] == "dead:1" and letter["reason"].startswith(f"record is {len(line):,}")


def test_a_bad_event_is_held_with_its_batch_alone_and_replays_once():
    bad = {"event_type": "custom_event", "data": {"timestamp_unixtime_ms": 1_700_000_000}}
    raw = batch_json.encode({**BATCH, "events": [*BATCH["events"], bad]})
    arrived, [letter], _ = parse_batch(RawRecord("f.ndjson:3", raw), 10**6, None)
    assert [e["data"]["event_id"] for e in arrived.batch["events"]] == [1]
    assert letter["source"] == "f.ndjson:3 events[1]"
    assert json.loads(letter["raw"]) == {**BATCH, "events": [bad]}
    fixed = json.loads(json.dumps(letter).replace("1700000000}", "1700000000000}"))
    replay = RawRecord("dead.ndjson:1", batch_json.encode(fixed))
    arrived, letters, events = parse_batch(replay, 10**6, None)
    assert letters == [] and events == 1
    assert arrived.source == "dead.ndjson:1 (dead letter of f.ndjson:3 events[1])"
    fixed_event = {**bad, "data": {"timestamp_unixtime_ms": 1_700_000_000_000}}
    assert arrived.batch["events"] == [fixed_event]


@pytest.mark.parametrize("name, text, source", [
    ("in.ndjson", b'{"a":1}\n\n{"b":2}\n', "{path}:3"),
    # mtime=0: a gzip header holds the second it was made in, and the id must be the
    # same in every test process (pytest-xdist)
    ("in.ndjson.gz", gzip.compress(b'{"a":1}\n{"b":2}\n', mtime=0), "{path}:2"),
    ("array.json", b'[{"a":1},\n {"b":2}]', "{path}#1"),
    ("one.json", b'{\n "b": 2\n}\n', "{path}"),
])
def test_a_file_source_is_read_again_as_it_came(tmp_path, name, text, source):
    path = tmp_path / name
    path.write_bytes(text)
    assert batch_json.decode(record_at(source.format(path=path))) == {"b": 2}
    assert record_at(f"{path}:99") is None
    assert record_at("pubsub:123") is None


def test_a_replayed_record_is_read_again_from_its_dead_letter_file(tmp_path):
    letters = tmp_path / "dead_letters_x.ndjson"
    letters.write_text("\n".join(json.dumps(dead_letter(f"in.ndjson:{n}", "parse", "why", raw))
                                 for n, raw in ((1, b"not json"), (2, b"\xff"))) + "\n")
    assert record_at(f"{letters}:1 (dead letter of in.ndjson:1)") == b"not json"
    assert record_at(f"{letters}:2 (dead letter of in.ndjson:2)") == b"\xff"


def test_a_merge_that_fails_holds_the_record_read_again_from_its_file(tmp_path):
    """What crossed the shuffle cannot be read: the dead letter holds the record from
    the file; with no file to read (a Pub/Sub message), it says the record is gone."""
    path = tmp_path / "in.ndjson"
    line = json.dumps(BATCH, indent=None).encode()
    path.write_bytes(b"{}\n" + line + b"\n")
    broken = ShuffledBatch(1_700_000_000_000, f"{path}:2", "App", 1, b"not zstd at all")
    [out] = Merger(NO_DICTIONARY).merged("d", [broken])
    assert isinstance(out, pvalue.TaggedOutput)
    assert out.value["stage"] == "merge" and out.value["reason"].startswith("unexpected ")
    assert replayed(out.value) == (f"{path}:2", line)

    [live] = Merger(NO_DICTIONARY).merged("d", [broken._replace(source="pubsub:5")])
    assert live.value["raw"] is None and "raw_form" not in live.value
    readable = ShuffledBatch.of(
        parse_batch(RawRecord("pubsub:6", line), 10**6, None)[0], NO_DICTIONARY)
    letter = Merger(NO_DICTIONARY)._dead_letter(readable, RuntimeError("boom"))
    assert letter["raw_form"] == AFTER_SETTINGS and json.loads(letter["raw"]) == BATCH


def test_what_is_and_is_not_a_dead_letter_read_back():
    letter = {"source": "f:1", "stage": "parse", "reason": "why", "raw": "x"}
    assert replayed(letter) == ("f:1", b"x")
    assert replayed({**letter, "raw_form": AFTER_SETTINGS}) == ("f:1", b"x")
    assert replayed({**letter, "other": 1}) is None  # a batch that happens to share keys
    assert replayed({**letter, "source": 7}) is None
    assert replayed({**letter, "raw": {"a": 1}}) is None
    assert replayed([letter]) is None
    every = {**letter, "raw_base64": "eA==", "raw_form": AFTER_SETTINGS,
             "raw_truncated_from_chars": 9}
    with pytest.raises(ValueError, match="^a dead letter whose record was cut to its first MiB"
                                         " cannot be replayed$"):
        replayed(every)
    with pytest.raises(ValueError, match="^a dead letter whose raw_base64 is not base64$"):
        replayed({**letter, "raw_base64": "e!A=="})
    with pytest.raises(ValueError, match="^a dead letter without its record cannot be replayed$"):
        replayed({**letter, "raw": None})
    # A lone surrogate, which JSON text may carry escaped, comes back as the bytes it was.
    assert replayed({**letter, "raw": "\ud800"}) == ("f:1", b"\xed\xa0\x80")


def test_a_dead_letter_of_text_keeps_it_as_text_and_names_an_unforeseen_error():
    assert dead_letter("f:1", "merge", "why", "café") == {
        "source": "f:1", "stage": "merge", "reason": "why", "raw": "café"}
    assert dead_letter("f:1", "parse", "why", "é".encode()) == {
        "source": "f:1", "stage": "parse", "reason": "why", "raw": "é"}
    assert dead_letter("f:1", "parse", "why", b"\xffa")["raw"] == "\ufffda"
    assert unexpected(KeyError("k")) == "unexpected KeyError: 'k'"
    assert unexpected(ValueError("v" * 2000)) == f"unexpected ValueError: {'v' * 2000}"[:1000]
