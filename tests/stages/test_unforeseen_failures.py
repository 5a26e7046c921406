"""Failures no rule foresaw (a bug in a step, a value a reader broke) become dead
letters with the error's type and message, are counted, and the run's counts still
reconcile: each catch-all, of parsing, the settings and the merge, reached through
the whole forwarding graph on the engine a bounded run uses.

The faults come in through what the graph is given (a record, the settings, the
shuffle's codec), never through the product's own code or I/O."""

from __future__ import annotations

import dataclasses
import json

import apache_beam as beam

from pipeline.build import forward
from pipeline.config import load_config
from pipeline.run import counters_of
from tests.conftest import list_keys
from tests.oracle import forwarded_event_ids
from tests.pipelines import batch_pipeline
from tests.stages.batches import T0, batch
from transforms import metrics
from transforms.machinery.shuffled import ShuffleCodec
from transforms.rules.settings import ForwardingSettings
from transforms.values import RawRecord


class BrokenBytes(bytes):
    """A record's bytes that fail when measured, as a reader's bug could hand over."""

    def __len__(self):
        raise RuntimeError("the reader broke this record")


@dataclasses.dataclass(frozen=True)
class SettingsWithABug(ForwardingSettings):
    """The integration's settings, failing on one event type."""

    def filtering_setting(self, event_type):
        if event_type == "settings_bug":
            raise RuntimeError("the settings failed here")
        return super().filtering_setting(event_type)


@dataclasses.dataclass(frozen=True)
class CodecWithABug(ShuffleCodec):
    """The shuffle's codec, failing to read back one batch that crossed it."""

    def decompress(self, data: bytes) -> bytes:
        parts = super().decompress(data)
        if b"merge_bug" in parts:
            raise RuntimeError("what crossed the shuffle cannot be read")
        return parts


def record(n: int, *event_ids: int, event_type: str = "custom_event") -> RawRecord:
    data = batch(f"d{n}", T0 + n * 1000, *event_ids)
    for event in data["events"]:
        event["event_type"] = event_type
    return RawRecord(f"in.ndjson:{n}", json.dumps(data).encode())


def test_an_unforeseen_failure_in_any_step_is_a_counted_dead_letter(
    s3_endpoint, s3_client, bucket, tmp_path
):
    good = [record(n, 10 * n, 10 * n + 1) for n in range(1, 4)]
    broken = RawRecord("in.ndjson:20", BrokenBytes(json.dumps(batch("d20", T0, 200)).encode()))
    settings_fail = record(21, 210, 211, 212, event_type="settings_bug")
    merge_fail = record(22, 220, 221, event_type="merge_bug")
    config, _ = load_config([f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
                             "--input=unused.ndjson", "--upload_day=2026-12-01",
                             f"--dead_letter_location={tmp_path / 'dead'}"])
    config = dataclasses.replace(config, settings=SettingsWithABug())
    p = batch_pipeline()
    forward(p | beam.Create([*good, broken, settings_fail, merge_fail]), config,
            codec=CodecWithABug())
    result = p.run()
    result.wait_until_finish()
    counters = counters_of(result)

    letters = {letter["source"]: letter for path in (tmp_path / "dead").glob("*.ndjson")
               for letter in map(json.loads, path.read_text().splitlines())}
    assert {source: (letter["stage"], letter["reason"]) for source, letter in letters.items()} == {
        "in.ndjson:20": ("parse", "unexpected RuntimeError: the reader broke this record"),
        "in.ndjson:21": ("apply_settings", "unexpected RuntimeError: the settings failed here"),
        "in.ndjson:22": ("merge",
                         "unexpected RuntimeError: what crossed the shuffle cannot be read"),
    }
    assert letters["in.ndjson:20"]["raw"] == bytes(broken.data).decode()  # as it came
    assert json.loads(letters["in.ndjson:21"]["raw"])["events"][0]["data"]["event_id"] == 210
    forwarded = [json.loads(line) for key in list_keys(s3_client, bucket)
                 if "Verification" not in key
                 for line in s3_client.get_object(Bucket=bucket, Key=key)["Body"].iter_lines()]
    assert sorted(e["data"]["event_id"] for b in forwarded for e in b["events"]) == sorted(
        forwarded_event_ids(json.loads(r.data) for r in good))
    # The broken record was never read as a batch; the other two hold 3 + 2 events.
    assert counters[metrics.RECORDS_DEAD_LETTERED] == 1, counters
    assert counters[metrics.EVENTS_DEAD_LETTERED] == 5, counters
    assert metrics.reconciled(counters), metrics.format_summary(counters)
