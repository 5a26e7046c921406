"""ReadBatches in a TestPipeline: files read and parsed, a bad line a dead letter."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import SAMPLE_BATCH
from tests.pipelines import batch_pipeline
from tests.stages.batches import T0, batch
from transforms.io import s3
from transforms.parse import ParseBatches
from transforms.read import ReadBatches


def test_read_and_parse_batches_with_dead_letters(tmp_path):
    good = tmp_path / "good.ndjson"
    good.write_text(json.dumps(batch("d1", T0, 1)) + "\nnot json\n")
    (tmp_path / "sample.json").write_bytes(SAMPLE_BATCH.read_bytes())
    with batch_pipeline() as p:
        read = p | ReadBatches([str(tmp_path / "*")], s3.S3Connection())
        parsed = read["records"] | ParseBatches()
        assert_that(
            parsed["batches"]
            | beam.Map(lambda a: (a.source.rsplit("/", 1)[-1], a.device, a.app_name)),
            equal_to([
                ("good.ndjson:1", "mp_deviceid:d1", "App"),
                ("sample.json", "mp_deviceid:3fb44a79-df2d-446d-acf1-e87eda854ae1", "SDK_Canary"),
            ]),
            label="batches",
        )
        assert_that(
            parsed["dead_letters"] | beam.Map(lambda d: (d["source"].rsplit("/", 1)[-1], d["raw"])),
            equal_to([("good.ndjson:2", "not json")]),
            label="dead_letters",
        )




def test_reads_in_parts_take_every_file_once_and_as_many_each_as_can_be(tmp_path):
    """A graph that reads its files in several places (a sliced run on Prism) gives each
    read its part: every file in exactly one, the parts' file counts one apart, a file
    two patterns match read twice as by one read."""
    for n in range(5):
        (tmp_path / f"in-{n}.ndjson").write_text(json.dumps(batch(f"d{n}", T0, 1)) + "\n")
    patterns = [str(tmp_path / "*.ndjson"), str(tmp_path / "in-4.ndjson")]
    with batch_pipeline() as p:
        for part in range(2):
            read = p | f"Read{part}" >> ReadBatches(patterns, s3.S3Connection(), part, 2)
            assert_that(read["records"] | f"File{part}" >> beam.Map(
                            lambda r: r.source.rsplit("/", 1)[-1].split(":")[0]),
                        equal_to([["in-0.ndjson", "in-2.ndjson", "in-4.ndjson"],
                                  ["in-1.ndjson", "in-3.ndjson", "in-4.ndjson"]][part]),
                        label=f"part{part}")
