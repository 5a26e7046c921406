"""Property-based fuzzing: no record of any shape stops a run or vanishes.

Hypothesis generates 10,000 malformed records of many shapes (bytes that are not
JSON or not UTF-8, JSON that is not a batch, events that are not a list, deep
nesting, integers of thousands of digits, NaN and 1e400, lone surrogates,
implausible timestamps in seconds, micro- and nanoseconds, oversize records)
and good batches carrying bad events. Each is checked against the pure parser,
then all of them, mixed with 2,000 good batches, go through the real pipeline
into the S3 server: the run finishes and reconciles, every good event is
forwarded exactly once, and every bad record and bad event is a dead letter
with a reason, under its own source.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.tools.sample_data import generate
from tests.conftest import list_keys, run_main
from tests.oracle import forwarded_event_ids
from transforms.parse import parse_batch
from transforms.rules import batch_json
from transforms.values import RawRecord

MAX_BATCH_BYTES = 65_536
TEMPLATE = next(generate(1, 1, seed=11))  # a real-looking batch to break

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
    allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _line(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


def _batch(**changes) -> dict:
    batch = json.loads(json.dumps(TEMPLATE))
    batch.update(changes)
    return batch


def _nested(depth: int) -> bytes:
    """Arrays and objects `depth` levels deep, as JSON text."""
    opening = b"".join(b"[" if level % 2 else b'{"n":' for level in range(depth))
    closing = b"".join(b"]" if level % 2 else b"}" for level in reversed(range(depth)))
    return opening + b"1" + closing


# Whole records that can only be dead letters.
not_json = st.builds(
    lambda data, at: (data[:at] + b"\x00" + data[at:]).replace(b"\n", b" "),
    st.binary(max_size=300), st.integers(0, 300),
)  # a raw NUL is never valid JSON, in a string or out of one
not_utf8 = st.builds(lambda text: b'{"events": [], "x": "' + text.encode() + b'\xff\xfe"}',
                     st.text(alphabet="abc", max_size=10))
not_an_object = json_values.filter(lambda v: not isinstance(v, dict)).map(_line)
events_not_a_list = st.builds(
    lambda events: _line(_batch(events=events)),
    json_values.filter(lambda v: v is not None and not isinstance(v, list)),
)
implausible_times = st.one_of(
    st.integers(1, 946_684_799_999),  # seconds, or before 2000
    st.integers(4_102_444_800_000, 2**70),  # micro- and nanoseconds, far future
    st.integers(-(2**63), 0),
    st.sampled_from([1.5e300, -1e20, 0.5, "soon", "", "9" * 30, True, [], {}]),
)
no_plausible_time = st.builds(
    lambda batch_time, event_time: _line(_batch(
        timestamp_unixtime_ms=batch_time,
        events=[{"event_type": "custom_event", "data": {"timestamp_unixtime_ms": event_time}}],
    )),
    implausible_times, implausible_times,
)
too_deep = st.builds(
    lambda depth: _line(_batch(deep=0)).replace(b'"deep": 0', b'"deep": ' + _nested(depth)),
    st.integers(100, 3000),  # with the batch itself, 101 levels and more
)
huge_integer = st.builds(
    lambda digits, sign: _line(_batch(mpid=0)).replace(
        b'"mpid": 0', b'"mpid": ' + sign + b"7" * digits),
    st.integers(4301, 8000), st.sampled_from([b"", b"-"]),
)
not_a_number = st.builds(
    lambda literal: _line(_batch(value=0)).replace(b'"value": 0', b'"value": ' + literal),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"]),
)
lone_surrogate = st.builds(
    lambda n, escaped: (json.dumps(_batch(name=f"x{chr(0xD800 + n)}y")).encode() if escaped
                        else _line(_batch(name=f"x{chr(0xD800 + n)}y"))),
    st.integers(0, 0x7FF), st.booleans(),
)  # as a \ud800 escape, or as the raw (invalid UTF-8) bytes
oversize = st.builds(lambda extra: _line(_batch(padding="p" * (MAX_BATCH_BYTES + extra))),
                     st.integers(0, 5000))
# Each generator of bad records, and how a dead letter's reason for one may begin.
BAD_RECORDS = {
    "not_json": (not_json, ("not JSON: ", "not UTF-8 text: ")),
    "not_utf8": (not_utf8, ("not UTF-8 text: ",)),
    "not_an_object": (not_an_object, ("not a JSON object but a JSON ",)),
    "events_not_a_list": (events_not_a_list, ("events is a ",)),
    "no_plausible_time": (no_plausible_time, ("no usable arrival time: ",)),
    "too_deep": (too_deep, ("nested ",)),
    "huge_integer": (huge_integer, ("not JSON: Exceeds the limit ",)),
    "not_a_number": (not_a_number, ("not JSON: ",)),
    "lone_surrogate": (lone_surrogate, ("not UTF-8 text: ", "not valid Unicode: ")),
    "oversize": (oversize, ("record is ",)),
}
bad_records = st.one_of(*(generator.map(lambda raw, name=name: (name, raw))
                          for name, (generator, _) in BAD_RECORDS.items()))

# Good batches with bad events among good ones: the bad events are dead letters.
BAD_EVENTS = {
    "not_an_object": (json_values.filter(lambda v: not isinstance(v, dict)),
                      "event is a JSON "),
    "no_event_type": (st.dictionaries(st.sampled_from(["data", "x"]), json_values, max_size=2),
                      "event has no event_type string"),
    "implausible_time": (
        st.builds(lambda t: {"event_type": "custom_event", "data": {"timestamp_unixtime_ms": t}},
                  implausible_times),
        "event data.timestamp_unixtime_ms "),
    "data_not_an_object": (
        st.builds(lambda d: {"event_type": "custom_event", "data": d},
                  json_values.filter(lambda v: v is not None and not isinstance(v, dict))),
        "event data is a JSON "),
}
bad_events = st.one_of(*(generator.map(lambda event, name=name: (name, event))
                         for name, (generator, _) in BAD_EVENTS.items()))


def is_whole_record_dead_letter(raw: bytes) -> bool:
    arrived, letters, _ = parse_batch(RawRecord("f:1", raw), MAX_BATCH_BYTES, None)
    return arrived is None and [letter["source"] for letter in letters] == ["f:1"] and all(
        letter["reason"] for letter in letters)


def test_ten_thousand_malformed_records_through_the_pipeline(
    s3_endpoint, s3_client, bucket, tmp_path
):
    bad: list[tuple[str, bytes]] = []  # (generator, record)
    with_bad_events: list[tuple[bytes, list[str], dict]] = []  # (record, generators, good part)
    good_batches = iter(generate(20_000, 20_000, seed=12))

    @settings(max_examples=500, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(bad_records, min_size=20, max_size=20),
           st.lists(bad_events, min_size=1, max_size=3))
    def generate_and_check(records: list[tuple[str, bytes]], events: list) -> None:
        for _, raw in records:
            assert is_whole_record_dead_letter(raw), raw[:200]
        bad.extend(records)
        carrier = next(good_batches)
        carrier["events"] = carrier["events"][:1]
        raw = _line({**carrier, "events": [*carrier["events"], *(e for _, e in events)]})
        arrived, letters, _ = parse_batch(RawRecord("f:1", raw), MAX_BATCH_BYTES, None)
        assert arrived is not None and len(letters) == len(events), letters
        with_bad_events.append((raw, [name for name, _ in events], carrier))

    generate_and_check()
    assert len(bad) >= 10_000
    # Every generator produced its share: none was starved by the others or filtered away.
    made = Counter(name for name, _ in bad)
    assert set(made) == set(BAD_RECORDS) and min(made.values()) >= 300, made
    made_events = Counter(name for _, names, _ in with_bad_events for name in names)
    assert set(made_events) == set(BAD_EVENTS) and min(made_events.values()) >= 50, made_events

    good = [json.dumps(b).encode() for b in generate(2_000, 300, seed=13)]
    lines = [(raw, name) for name, raw in bad] + [(raw, "good") for raw in good] + [
        (raw, "bad_events") for raw, _, _ in with_bad_events]
    event_generators = {raw: names for raw, names, _ in with_bad_events}
    random.Random(14).shuffle(lines)
    kinds: dict[str, str] = {}
    event_kinds: dict[str, str] = {}  # "<source> events[i]" → generator
    folder = tmp_path / "in"
    folder.mkdir()
    for number in range(4):
        chunk = lines[number::4]
        path = folder / f"part-{number}.ndjson.gz"
        path.write_bytes(gzip.compress(b"\n".join(raw for raw, _ in chunk) + b"\n"))
        kinds.update((f"{path}:{line}", kind) for line, (_, kind) in enumerate(chunk, start=1))
        event_kinds.update(
            (f"{path}:{line} events[{1 + index}]", name)
            for line, (raw, kind) in enumerate(chunk, start=1) if kind == "bad_events"
            for index, name in enumerate(event_generators[raw]))

    code, out, err = run_main([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
        f"--input={folder}/*", "--folder_name=out", f"--max_batch_bytes={MAX_BATCH_BYTES}",
        f"--dead_letter_location={tmp_path / 'dead'}",
    ])
    assert code == 0, err[-3000:]
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out
    assert "records: read = parsed + dead-lettered -> reconciled" in out

    letters = [json.loads(line) for path in (tmp_path / "dead").glob("*.ndjson")
               for line in path.read_bytes().splitlines()]
    assert all(letter["reason"] and letter["stage"] for letter in letters)
    record_letters = {letter["source"]: letter for letter in letters
                      if " events[" not in letter["source"]}
    assert sorted(record_letters) == sorted(
        s for s, kind in kinds.items() if kind in BAD_RECORDS)
    for source, letter in record_letters.items():  # each with its generator's reason
        assert letter["reason"].startswith(BAD_RECORDS[kinds[source]][1]), (kinds[source], letter)
    event_letters = {letter["source"]: letter for letter in letters
                     if " events[" in letter["source"]}
    assert sorted(event_letters) == sorted(event_kinds)
    for source, letter in event_letters.items():
        assert letter["reason"].startswith(BAD_EVENTS[event_kinds[source]][1]), letter

    expected = forwarded_event_ids(
        [json.loads(raw) for raw in good] + [good for _, _, good in with_bad_events])
    forwarded = []
    for key in list_keys(s3_client, bucket, "out/"):
        if "Verification" in key:
            continue
        for line in s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines():
            forwarded += [batch_json.as_int(e["data"]["event_id"])
                          for e in json.loads(line)["events"]]
    assert sorted(forwarded) == sorted(expected)  # every good event, exactly once
    print(f"\n{len(bad):,} malformed records ({dict(made)}) and {len(with_bad_events):,} "
          f"batches with {len(event_letters):,} bad events ({dict(made_events)}) among "
          f"{len(good):,} good batches: "
          f"{len(letters):,} dead letters, {len(forwarded):,} events forwarded")
