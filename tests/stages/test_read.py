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


