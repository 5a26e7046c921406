"""The secret access key never shows in logs, output, errors or display data."""

from __future__ import annotations

import logging
import shutil

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.build import build
from pipeline.config import load_config
from tests.conftest import SAMPLE_BATCH, run_main

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"


def test_secret_absent_from_logs_output_and_summary(s3_endpoint, bucket, tmp_path, caplog):
    shutil.copy(SAMPLE_BATCH, tmp_path / "sample.json")
    caplog.set_level(logging.DEBUG)
    code, out, err = run_main([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
        f"--input={tmp_path}/*", "--access_key_id=AKIDEXAMPLE", f"--secret_access_key={SECRET}",
    ])
    assert code == 0, err
    assert SECRET not in out + err + caplog.text


def test_secret_absent_from_the_job_graphs_display_data_and_config_repr(tmp_path):
    config, beam_args = load_config([
        "--s3_bucket_name=acme", f"--input={tmp_path}/*", "--access_key_id=AKIDEXAMPLE",
        f"--secret_access_key={SECRET}",
    ])
    assert SECRET not in repr(config) and SECRET not in " ".join(beam_args)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build(pipeline, config)
    proto = pipeline.to_runner_api()
    display = [
        item.SerializeToString()
        for transform in proto.components.transforms.values()
        for item in transform.display_data
    ]
    assert display  # the graph does carry display data
    assert not any(SECRET.encode() in item for item in display)
    assert SECRET not in str(PipelineOptions(beam_args).display_data())
