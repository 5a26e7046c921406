"""Entry point: `python -m pipeline --s3_bucket_name=... --input=...`.

Validates the options, proves the bucket is writable, runs the pipeline on the
chosen runner and prints a summary whose event counts reconcile. Exit codes:
0 done, 1 the run failed or did not reconcile, 2 an option is wrong, 3 the
bucket check failed.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Sequence

import apache_beam as beam
import botocore.exceptions
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import iam
from pipeline.build import build
from pipeline.config import ConfigError, config_from_values, merged_values, validate_bucket_name
from transforms import metrics, read, s3

_LOG = logging.getLogger("pipeline")
# Runner names users type → what Beam knows. The DirectRunner name maps to the
# FnApiRunner itself: Beam's DirectRunner would first try to download Prism.
_RUNNERS = {
    "direct": "FnApiRunner",
    "directrunner": "FnApiRunner",
    "fnapirunner": "FnApiRunner",
    "flink": "FlinkRunner",
    "flinkrunner": "FlinkRunner",
    "spark": "SparkRunner",
    "sparkrunner": "SparkRunner",
}


def make_runner(options: PipelineOptions):
    """The runner to use. The direct runner is the FnApiRunner for bounded runs and
    the BundleBasedDirectRunner for streaming, which the FnApiRunner cannot do."""
    standard = options.view_as(StandardOptions)
    name = _RUNNERS.get((standard.runner or "direct").lower(), standard.runner)
    if name == "FnApiRunner":
        if standard.streaming:
            return "BundleBasedDirectRunner"
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return name


def _stop_on_sigterm() -> None:
    """SIGTERM stops a streaming run the way Ctrl-C does."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def counters_of(result) -> dict[str, int]:
    """The run's counters in the forwarder's namespace, summed over steps."""
    totals: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


def check_inputs_exist(patterns: Sequence[str], connection: s3.S3Connection) -> None:
    """Every --input names at least one file it can list, or one sentence says why."""
    client = read.input_client(patterns, connection)
    for pattern in patterns:
        try:
            paths = read.expand_pattern(pattern, client)
        except botocore.exceptions.ClientError as err:
            code = s3.error_code(err)
            raise ConfigError(f"--input {pattern!r} cannot be listed: {code}.") from None
        except (ValueError, OSError, botocore.exceptions.BotoCoreError) as err:
            raise ConfigError(f"--input {pattern!r} cannot be listed: {err}") from None
        if not paths:
            raise ConfigError(f"--input {pattern!r} matches no file.")


def main(argv: Sequence[str] | None = None) -> int:
    # force: importing Beam may already have given the root logger a handler.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    for chatty in ("botocore", "boto3", "urllib3", "smart_open", "apache_beam"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    try:
        values, beam_args, print_policy = merged_values(argv)
        if print_policy:
            bucket = validate_bucket_name(values["s3_bucket_name"])
            print(iam.policy_text(
                print_policy, bucket, values["aws_role_arn"], values["kms_key_id"]
            ))
            return 0
        config = config_from_values(values)
        check_inputs_exist(config.inputs, config.connection)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if not config.skip_bucket_check:
        try:
            key = s3.check_bucket_writable(
                s3.make_client(config.connection), config.connection, config.bucket, config.folder
            )
        except s3.BucketCheckError as err:
            print(f"error: {err}", file=sys.stderr)
            return 3
        _LOG.info("bucket check: wrote s3://%s/%s", config.bucket, key)

    options = PipelineOptions(beam_args)
    if config.streaming:
        options.view_as(StandardOptions).streaming = True
    started = time.monotonic()
    pipeline = beam.Pipeline(runner=make_runner(options), options=options)
    build(pipeline, config)
    result = pipeline.run()
    if config.streaming:
        _stop_on_sigterm()
        source = config.input_subscription or config.input_topic
        _LOG.info("forwarding %s live; Ctrl-C stops", source)
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            _LOG.info("stopping")
            result.cancel()
            return 0
    result.wait_until_finish()
    elapsed = time.monotonic() - started

    counters = counters_of(result)
    print(metrics.format_summary(counters))
    print(f"  seconds: {elapsed:.1f}")
    if metrics.unaccounted_events(counters) or metrics.unaccounted_records(counters):
        return 1
    return 0
