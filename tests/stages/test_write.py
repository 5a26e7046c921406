"""WriteBatchFiles and WriteDeadLetters in a TestPipeline: files within bounds, to the
S3 server and to a local directory."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import list_keys
from tests.fault_proxy import FaultProxy
from tests.pipelines import batch_pipeline
from tests.stages.batches import T0, arrived
from transforms.batching import BatchPerDevice, StampArrival
from transforms.io import s3
from transforms.machinery.files import UPLOAD_THREADS
from transforms.rules.naming import DateFolders
from transforms.values import Batching, FileLayout
from transforms.write import WriteBatchFiles, WriteDeadLetters


def test_write_batch_files_packs_by_bounds_and_writes_to_s3(s3_endpoint, s3_client, bucket):
    connection = s3.S3Connection(endpoint_url=s3_endpoint)
    items = [arrived(f"d{n}", T0 + n * 1000, n) for n in range(5)]
    with batch_pipeline() as p:
        batched = p | beam.Create(items) | StampArrival() | BatchPerDevice(Batching())
        written = (
            batched["batches"]
            | WriteBatchFiles(
                f"s3://{bucket}", connection,
                FileLayout(folder="out", date_folders=DateFolders.EVENT_TIME, max_batches=2),
                Batching(allowed_lateness_s=0),
            )
        )
        assert_that(written | beam.Map(lambda w: (w.lines, w.outcome)),
                    equal_to([(2, "written"), (2, "written"), (1, "written")]))
    keys = list_keys(s3_client, bucket)
    assert len(keys) == 3 and all(k.startswith("out/2023-11-14/App_2023111422") for k in keys)
    lines = [
        json.loads(line)
        for key in keys
        for line in s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
    ]
    assert sorted(b["events"][0]["data"]["event_id"] for b in lines) == [0, 1, 2, 3, 4]


def test_a_bundles_files_are_written_at_once_each_out_in_its_own_window(
    s3_endpoint, s3_client, bucket
):
    """The files of one bundle are written UPLOAD_THREADS at once (so their gzip runs on
    every core: a live backlog's windows close together and go out in one bundle),
    each written file coming out in its own file's window. Through a proxy that holds
    every answer 0.3 s, the most PUTs in flight at once is counted; one after another
    it would be 1."""
    window_ms = Batching().window_size_s * 1000
    arrivals = [T0 + n * window_ms // 3 for n in range(9)]  # a third of a window apart
    with FaultProxy(s3_endpoint, fault_rate=1.0, faults=("slow",), slow_s=0.3) as proxy:
        connection = s3.S3Connection(endpoint_url=proxy.endpoint)
        with batch_pipeline() as p:
            batched = (p | beam.Create([arrived(f"d{n}", at, n) for n, at in enumerate(arrivals)])
                       | StampArrival() | BatchPerDevice(Batching()))
            written = batched["batches"] | WriteBatchFiles(
                f"s3://{bucket}", connection, FileLayout(folder="out", max_batches=1),
                Batching(allowed_lateness_s=0))
            assert_that(written | beam.Map(
                lambda w, window=beam.DoFn.WindowParam: (window.start.micros // 1000, w.lines)),
                equal_to([(at - at % window_ms, 1) for at in arrivals]))
    assert len(list_keys(s3_client, bucket)) == 9
    assert 2 <= proxy.most_in_flight["PUT"] <= UPLOAD_THREADS


def test_write_dead_letters_to_a_local_directory(tmp_path):
    letters = [{"source": f"f:{n}", "stage": "parse", "reason": "not JSON", "raw": "x"}
               for n in range(3)]
    with batch_pipeline() as p:
        written = p | beam.Create(letters) | WriteDeadLetters(str(tmp_path), s3.S3Connection())
        assert_that(written | beam.Map(lambda w: w.lines), equal_to([3]))
    [path] = [f for f in tmp_path.iterdir()]
    assert path.name.startswith("dead_letters_") and path.suffix == ".ndjson"
    assert sorted(json.loads(line)["source"] for line in path.read_text().splitlines()) == [
        "f:0", "f:1", "f:2",
    ]


