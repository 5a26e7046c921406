"""Test pipelines on named local engines (no Prism download, ever)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline


def batch_pipeline() -> TestPipeline:
    """Bounded: the FnApiRunner, as `python -m pipeline` runs the DirectRunner."""
    return TestPipeline(runner=FnApiRunner(), options=PipelineOptions([]))


def streaming_pipeline() -> TestPipeline:
    """Unbounded, for TestStream: the BundleBasedDirectRunner in streaming mode."""
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(runner="BundleBasedDirectRunner", options=options)
