"""The bounded path's windows-in-the-key grouping writes exactly what Beam's
windows and triggers write: the same keys with the same bytes, in every mode."""

from __future__ import annotations

import pytest

from pipeline.build import forward
from pipeline.config import load_config
from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import list_keys
from tests.pipelines import batch_pipeline
from transforms.read import ReadBatches


def objects(client, bucket) -> dict[str, bytes]:
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in list_keys(client, bucket)}


@pytest.mark.parametrize("flags", [
    [],
    ["--wait_for_complete_batch=true", "--session_gap_s=900"],
    ["--send_as_batch=false", "--max_batches_per_file=50"],
    ["--store_data_in_folders_by_date=true", "--window_size_s=60", "--file_shards=3"],
])
def test_keyed_and_beam_windows_write_the_same_objects(
    s3_endpoint, s3_client, tmp_path, flags
):
    write_ndjson(str(tmp_path / "in.ndjson"), generate(500, 30))
    written = []
    for keyed in (True, False):
        bucket = f"keyed-{str(keyed).lower()}-{len(flags)}-{abs(hash(tuple(flags))) % 10**6}"
        s3_client.create_bucket(Bucket=bucket)
        config, _ = load_config([
            f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
            f"--input={tmp_path}/in.ndjson", "--use_compression=true", *flags,
        ])
        with batch_pipeline() as p:
            read = p | ReadBatches(list(config.inputs), config.connection)
            forward(read["records"], config, read["dead_letters"], keyed_windows=keyed)
        written.append(objects(s3_client, bucket))
    assert len(written[0]) > 3
    assert written[0] == written[1]
