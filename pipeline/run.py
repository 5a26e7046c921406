"""Entry point: `python -m pipeline --s3_bucket_name=... --input=...`.

Checks every option and proves the bucket and dead-letter location writable
before anything is read, runs the pipeline on the chosen runner and prints a
summary whose counts reconcile. Exit codes:

    0   done, and the counts reconcile
    1   the run failed, or its counts do not reconcile
    2   an option is wrong (value, unknown flag, runner, input that matches nothing)
    3   the bucket or the dead-letter location cannot be written (missing, denied,
        unreachable)
    4   S3 kept failing one write past --s3_write_deadline_s
    130 interrupted (Ctrl-C) during a bounded run
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import runners, sliced
from pipeline.build import build, trained_codec
from pipeline.checks import BucketCheckError, check_inputs_exist, check_output_writable
from pipeline.config import (
    ConfigError,
    check_beam_args,
    config_from_values,
    date_folders_of,
    log_level_of,
    merged_values,
    output_format_of,
    validate_bucket_name,
)
from pipeline.errors import EngineGone
from pipeline.logs import Console
from pipeline.progress import LiveStatus, ProgressReporter
from pipeline.runners import (
    current_metrics,
    drains_on_stop,
    engine_name,
    make_runner,
    runner_name,
    worker_environment,
)
from pipeline.tools import athena, iam
from transforms import metrics
from transforms.io import inputs, pubsub_source, s3
from transforms.rules.naming import DateFolders

_LOG = logging.getLogger("pipeline")
EXIT_FAILED, EXIT_CONFIG, EXIT_CHECK, EXIT_S3_GAVE_UP, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
_GAVE_UP = re.compile(re.escape(s3.WriteGaveUp.PREFIX) + r"s3://[^\n]*")


def _stop_on_sigterm() -> None:
    """SIGTERM stops a streaming run the way Ctrl-C does."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


# How long a bounded run's runner may take to stop after Ctrl-C before the launcher
# exits without it (its workers end with it: their channels to it break).
INTERRUPT_GRACE_S = 15


def _note_interrupts(give_up: Callable[[], None] | None = None) -> list[int]:
    """Ctrl-C as usual (KeyboardInterrupt), and noted: the runner may wrap the
    KeyboardInterrupt in an error of its own. The list is non-empty once it came.
    `give_up`: called if the process still runs INTERRUPT_GRACE_S after the first
    Ctrl-C. Beam's runners can wait forever after one: the DirectRunner's worker
    processes, interrupted before a worker connected, wait for that worker to be told
    to stop, which never comes (apache/beam#19674, open in Beam 2.77)."""
    seen: list[int] = []

    def interrupt(signum, frame):
        if not seen and give_up is not None:
            timer = threading.Timer(INTERRUPT_GRACE_S, give_up)
            timer.daemon = True
            timer.start()
        seen.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    return seen


def _forwarder_metrics(result) -> dict:
    """A metrics query of the job as it is now, in the forwarder's namespace."""
    return current_metrics(result).query(MetricsFilter().with_namespace(metrics.NAMESPACE))


def counters_of(result, query: dict | None = None) -> dict[str, int]:
    """The run's counters in the forwarder's namespace, summed over steps (from
    `query`, the result of a metrics query already made, if given)."""
    totals: dict[str, int] = {}
    if query is None:
        query = _forwarder_metrics(result)
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


def live_metrics_of(result) -> tuple[dict[str, int], int | None]:
    """A running live job's counters, and how long its oldest message has been held
    unacknowledged (ms; None where the source does not say: Beam's ReadFromPubSub)."""
    query = _forwarder_metrics(result)
    held_ms = []
    for gauge in query["gauges"]:
        if gauge.key.metric.name == metrics.OLDEST_UNACKED_MS:
            value = gauge.committed or gauge.attempted
            if value is not None:
                held_ms.append(value.value)
    return counters_of(result, query), max(held_ms) if held_ms else None


def main(
    argv: Sequence[str] | None = None,
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
) -> int:
    """The forwarder from its flags; returns the exit code. `clock`: what time the run
    starts (a bounded run's upload day)."""
    console = Console()
    argv = sys.argv[1:] if argv is None else argv
    console.hide_in_argv(argv, "--secret_access_key")
    try:
        values, beam_args, prints = merged_values(argv)
        console.hide(values["secret_access_key"])
        console.set_level(log_level_of(values["log_level"]))
        if prints:
            print(_printed(values, prints))
            return 0
        config = config_from_values(values, now=clock())
        check_beam_args(beam_args)
        options = PipelineOptions(beam_args)
        if config.streaming:
            options.view_as(StandardOptions).streaming = True
        runner = make_runner(options)
        check_inputs_exist(config.inputs, config.connection)
    except ConfigError as err:
        console.error(str(err))
        return EXIT_CONFIG

    if _naming_the_upload_day(config):
        _LOG.info("upload day: %s (date folders by upload time); a rerun writes the same keys%s",
                  config.upload_day, _naming_the_upload_day(config))
    if not config.skip_bucket_check:
        try:
            for where in check_output_writable(config):
                _LOG.info("write check: %s", where)
        except BucketCheckError as err:
            console.error(str(err))
            return EXIT_CHECK
    return _run(config, runner, options, console)


def _naming_the_upload_day(config) -> str:
    """What a rerun must say to write the same keys: its upload day, if it names folders."""
    if config.upload_day and config.layout.date_folders in (
        DateFolders.UPLOAD_TIME, DateFolders.EVENT_TIME_OR_UPLOAD_TIME
    ):
        return f" with --upload_day={config.upload_day}"
    return ""


def _printed(values: dict, prints: dict) -> str:
    """What --print_iam_policy or --print_athena_ddl asks for, for --s3_bucket_name."""
    bucket = validate_bucket_name(values["s3_bucket_name"])
    if prints.get("print_iam_policy"):
        return iam.policy_text(
            prints["print_iam_policy"], bucket, values["aws_role_arn"], values["kms_key_id"]
        )
    folder = (values["folder_name"] or "").strip("/") or None
    return athena.ddl_text(
        bucket, folder, date_folders_of(values["store_data_in_folders_by_date"] or "none"),
        parquet=output_format_of(values["output_format"]) == "parquet",
    )


def _run(config, runner, options: PipelineOptions, console: Console) -> int:
    """Runs the pipeline; a failure ends in one sentence and its exit code."""
    reported = threading.Lock()  # held once the sentence is out: it is said once

    def report_interrupted() -> None:
        if reported.acquire(blocking=False):
            console.error("interrupted; nothing written so far is lost, and a rerun writes "
                          f"the same keys{_naming_the_upload_day(config)}.")

    def exit_without_the_runner() -> None:
        _LOG.warning("the runner did not stop within %d s of Ctrl-C; exiting without it",
                     INTERRUPT_GRACE_S)
        report_interrupted()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    # A live run stops on Ctrl-C by draining, within its own deadline (_run_live).
    interrupted = _note_interrupts(None if config.streaming else exit_without_the_runner)
    _LOG.info("running on %s", engine_name(runner))
    started = time.monotonic()
    try:
        with worker_environment():
            if config.streaming:
                pipeline = beam.Pipeline(runner=runner, options=options)
                name = runner_name(options)
                build(pipeline, config, runner=name)
                return _run_live(config, pipeline, drains=drains_on_stop(name))
            input_bytes = functools.cache(lambda: inputs.total_input_bytes(
                config.inputs, inputs.input_client(config.inputs, config.connection)))
            with _progress(config, runners.reports_progress(options), input_bytes):
                counters = _run_bounded(config, options, input_bytes)
    except ConfigError as err:  # found only once the run starts (the spill's disk)
        console.error(str(err))
        return EXIT_CONFIG
    except EngineGone as err:
        console.error(str(err))
        return EXIT_FAILED
    except (KeyboardInterrupt, Exception) as err:  # Beam wraps a worker's error, and Ctrl-C
        if interrupted:
            report_interrupted()
            return EXIT_INTERRUPTED
        gave_up = _GAVE_UP.search(str(err))
        if gave_up:
            console.error(gave_up.group().strip())
            return EXIT_S3_GAVE_UP
        _LOG.exception("the run failed")
        first_line = (str(err).splitlines() or [""])[0][:500]
        console.error(f"the run failed: {type(err).__name__}: {first_line}")
        return EXIT_FAILED
    elapsed = time.monotonic() - started

    print(metrics.format_summary(counters))
    print(f"  seconds: {elapsed:.1f}")
    if not metrics.reconciled(counters):
        return EXIT_FAILED
    return 0


def _run_bounded(config, options: PipelineOptions, input_bytes: Callable[[], int]
                 ) -> dict[str, int]:
    """Runs a bounded run, sliced where the runner needs it; returns its counters.
    `input_bytes`: the input's size (listed once, when first asked)."""

    client = inputs.input_client(config.inputs, config.connection)

    def run_graph(build_graph) -> dict[str, int]:
        runner = make_runner(options, input_bytes)
        pipeline = beam.Pipeline(runner=runner, options=options)
        build_graph(pipeline)
        result = pipeline.run()
        result.wait_until_finish()
        return counters_of(result)

    name = runner_name(options)
    if sliced.applies(config, name):
        files = [each for pattern in config.inputs
                 for each in inputs.matched_files(pattern, client)]
        return sliced.run_sliced(config, run_graph, sliced.spill_bytes_needed(files))
    if config.arrival_slice_s and name not in runners.SLICING:
        _LOG.info("not sliced: %s spills what it groups to disk itself", name)
    codec = trained_codec(config)
    return run_graph(lambda pipeline: build(pipeline, config, runner=name, codec=codec))


def _progress(config, reported: bool, input_bytes: Callable[[], int]
              ) -> contextlib.AbstractContextManager:
    """Progress lines while a bounded run reads and writes, unless turned off or its
    workers cannot report (`reported`)."""
    if not config.progress_every_s or not reported:
        return contextlib.nullcontext()
    return ProgressReporter(input_bytes(), config.progress_every_s)


# How long a stopped live run may take to write its open windows before it is cancelled.
DRAIN_TIMEOUT_S = 120


class _Job:
    """A running job, waited for in a thread of its own, so that Ctrl-C and SIGTERM
    reach the launcher's main thread while Beam watches the job's state."""

    def __init__(self, result):
        self.result = result
        self._finished = threading.Event()
        self._error: BaseException | None = None
        threading.Thread(target=self._wait, name="wait-for-job", daemon=True).start()

    def _wait(self) -> None:
        try:
            self.result.wait_until_finish()
        except BaseException as err:  # noqa: BLE001 - raised again in the main thread
            self._error = err
        finally:
            self._finished.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Whether the job ended within `timeout_s` (None: waits for its end); raises
        its error if it failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._finished.wait(0.5):
            if deadline is not None and time.monotonic() > deadline:
                return False
        if self._error is not None:
            raise self._error
        return True


def _run_live(config, pipeline: beam.Pipeline, drains: bool) -> int:
    """Runs until Ctrl-C or SIGTERM. With the forwarder's own source (`drains`), a stop
    is a drain: no more pulls, every open window written, the job ended, the counts
    reconciled; a second Ctrl-C, or DRAIN_TIMEOUT_S, cancels instead (see
    `runners.drains_on_stop`)."""
    if not drains:
        return _run_until_stopped(config, pipeline, None)
    with tempfile.TemporaryDirectory(prefix="mparticle-s3-drain-") as folder:
        drain_file = os.path.join(folder, "drain")
        os.environ[pubsub_source.DRAIN_FILE_ENV] = drain_file  # the workers inherit it
        try:
            return _run_until_stopped(config, pipeline, drain_file)
        finally:
            del os.environ[pubsub_source.DRAIN_FILE_ENV]


def _run_until_stopped(config, pipeline: beam.Pipeline, drain_file: str | None) -> int:
    """Runs the job, with a status line, until it ends or is stopped; then its summary.
    `drain_file`: where to ask the source to drain, None where it cannot."""
    job = _Job(pipeline.run())
    _stop_on_sigterm()
    source = config.input_subscription or config.input_topic
    _LOG.info("forwarding %s live; Ctrl-C stops", source)
    status = (LiveStatus(lambda: live_metrics_of(job.result), config.progress_every_s)
              if config.progress_every_s else contextlib.nullcontext())
    drained = False
    with status:
        try:
            job.wait()
            drained = True  # the job ended by itself
        except KeyboardInterrupt:
            drained = drain_file is not None and _drain(job, drain_file)
    try:
        counters = counters_of(job.result)
    except Exception as err:  # a runner that cannot say: stop all the same
        counters = None
        _LOG.warning("the counters could not be read: %s", err)
    if not drained:
        job.result.cancel()
    if counters is None:
        return 0
    print(metrics.format_summary(counters, live=not drained), flush=True)
    if drained and not metrics.reconciled(counters):
        return EXIT_FAILED
    return 0


def _drain(job: _Job, drain_file: str) -> bool:
    """Asks the source to drain; whether the job then ended within DRAIN_TIMEOUT_S."""
    _LOG.info("stopping: pulling no more, writing the open windows (at most %d s; Ctrl-C "
              "again stops at once)", DRAIN_TIMEOUT_S)
    open(drain_file, "w").close()
    try:
        if job.wait(DRAIN_TIMEOUT_S):
            _LOG.info("stopped: every window written")
            return True
    except KeyboardInterrupt:
        pass
    _LOG.warning("stopping without the drain: what is in open windows is written by no one")
    return False
