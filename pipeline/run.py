"""Entry point: `python -m pipeline --s3_bucket_name=... --input=...`.

Checks every option and proves the bucket and dead-letter location writable
before anything is read, runs the pipeline on the chosen runner and prints a
summary whose counts reconcile. Exit codes:

    0   done, and the counts reconcile
    1   the run failed, or its counts do not reconcile
    2   an option is wrong (value, unknown flag, runner, input that matches nothing)
    3   the bucket or the dead-letter location cannot be written, or the Pub/Sub
        subscription or topic cannot be read (missing, denied, unreachable)
    4   S3 kept failing one write past --s3_write_deadline_s
    5   a live run stopped without writing all it held: its drain passed its deadline,
        a second Ctrl-C cancelled it, or its runner cannot drain (the DirectRunner)
    6   a live run lost its Pub/Sub source for --pubsub_unavailable_s: it drained what
        it held, then stopped
    130 interrupted (Ctrl-C) during a bounded run, or before a live job started
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
import threading
import time
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import live, sliced
from pipeline.build import build, trained_codec
from pipeline.checks import (
    BucketCheckError,
    SourceCheckError,
    check_inputs_exist,
    check_live_source,
    check_output_writable,
)
from pipeline.config import (
    ConfigError,
    date_folders_of,
    log_format_of,
    log_level_of,
    merged_values,
    output_format_of,
    validate_bucket_name,
    validated,
)
from pipeline.errors import EngineGone
from pipeline.logs import Console, json_logs, say
from pipeline.monitoring import MetricsServer
from pipeline.progress import LiveStatus, ProgressReporter
from pipeline.runners import (
    RunnerProfile,
    current_metrics,
    engine_name,
    engine_shielded,
    make_runner,
    profile_for,
    worker_environment,
)
from pipeline.tools import athena, iam
from transforms import metrics
from transforms.io import inputs, s3
from transforms.rules.naming import DateFolders

_LOG = logging.getLogger("pipeline")
EXIT_FAILED, EXIT_CONFIG, EXIT_CHECK, EXIT_S3_GAVE_UP = 1, 2, 3, 4
EXIT_NOT_DRAINED, EXIT_SOURCE_LOST, EXIT_INTERRUPTED = 5, 6, 130
_GAVE_UP = re.compile(re.escape(s3.WriteGaveUp.PREFIX) + r"s3://[^\n]*")


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


def metrics_of(result) -> tuple[dict[str, int], dict[str, int]]:
    """A running job's counters and gauges: of each gauge, the largest value for
    OLDEST_UNACKED_MS (the oldest message any reader holds), else the latest."""
    query = _forwarder_metrics(result)
    latest: dict[str, tuple] = {}
    for gauge in query["gauges"]:
        value = gauge.committed or gauge.attempted
        if value is None:
            continue
        name = gauge.key.metric.name
        rank = (value.value,) if name == metrics.OLDEST_UNACKED_MS else (value.timestamp,)
        if name not in latest or rank > latest[name][0]:
            latest[name] = (rank, value.value)
    return counters_of(result, query), {name: value for name, (_, value) in latest.items()}


def live_metrics_of(result) -> tuple[dict[str, int], int | None]:
    """A running live job's counters, and how long its oldest message has been held
    unacknowledged (ms; None where the source does not say: Beam's ReadFromPubSub)."""
    counters, gauges = metrics_of(result)
    return counters, gauges.get(metrics.OLDEST_UNACKED_MS)


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
        console.set_format(log_format_of(values["log_format"]))
        if prints:
            print(_printed(values, prints))
            return 0
        config = validated(values, beam_args, now=clock())
        options = PipelineOptions(beam_args)
        if config.streaming:
            options.view_as(StandardOptions).streaming = True
        profile = profile_for(options, config.pubsub_readers, config.session_harnesses)
        # The input, checked once, and its size, listed once, when first asked: a
        # bounded DirectRunner or Dask run asks as its runner is made, once the runner's
        # own options are checked.
        inputs_checked = functools.cache(
            lambda: check_inputs_exist(config.inputs, config.connection))
        input_bytes = functools.cache(lambda: inputs_checked() or inputs.total_input_bytes(
            config.inputs, inputs.input_client(config.inputs, config.connection)))
        runner = make_runner(options, None if config.streaming else input_bytes)
        inputs_checked()
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
    if config.streaming:
        try:
            _LOG.info("source: %s", check_live_source(config))
        except SourceCheckError as err:
            console.error(str(err))
            return EXIT_CHECK
    return _run(config, profile, runner, options, console, input_bytes)


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


def _run(config, profile: RunnerProfile, runner, options: PipelineOptions, console: Console,
         input_bytes: Callable[[], int]) -> int:
    """Runs the pipeline on `runner` (made once for the run); a failure ends in one
    sentence and its exit code. `input_bytes`: a bounded run's input size."""
    _LOG.info("running on %s", engine_name(runner))
    if config.streaming:
        return _run_live(config, profile, runner, options, console)
    reported = threading.Lock()  # held once the sentence is out: it is said once

    def report_interrupted() -> None:
        if reported.acquire(blocking=False):
            console.error("interrupted; nothing written so far is lost, and a rerun writes "
                          f"the same keys{_naming_the_upload_day(config)}.")

    def exit_without_the_runner() -> None:
        _LOG.warning("the runner did not stop within %d s of Ctrl-C; exiting without it",
                     INTERRUPT_GRACE_S)
        report_interrupted()
        sliced.remove_open()  # os._exit skips the spill directory's own cleanup
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    interrupted = _note_interrupts(exit_without_the_runner)
    started = time.monotonic()
    server = _metrics_server(config)
    try:
        with (server or contextlib.nullcontext()), worker_environment():
            if server is not None:
                server.update({})  # ready: the run has begun
            with _progress(config, profile.reports_progress, input_bytes, server):
                counters = _run_bounded(config, profile, runner, options)
            if server is not None:
                server.stopped(counters)
    except (KeyboardInterrupt, Exception) as err:  # Beam wraps a worker's error, and Ctrl-C
        if interrupted and not isinstance(err, (ConfigError, EngineGone)):
            report_interrupted()
            return EXIT_INTERRUPTED
        return _failed(err, console)
    elapsed = time.monotonic() - started

    _summary(counters, seconds=round(elapsed, 1))
    if not metrics.reconciled(counters):
        return EXIT_FAILED
    return 0


def _summary(counters: dict[str, int], live: bool = False, seconds: float | None = None
             ) -> None:
    """The run summary on stdout: a table, or one JSON object with the counters."""
    if json_logs():
        fields = {"counters": counters, "reconciled": metrics.reconciled(counters),
                  "complete": not live}
        if seconds is not None:
            fields["seconds"] = seconds
        say("Run summary", logger="pipeline.summary", **fields)
        return
    say(metrics.format_summary(counters, live=live))
    if seconds is not None:
        say(f"  seconds: {seconds:.1f}")


def _failed(err: BaseException, console: Console) -> int:
    """The exit code of a run that raised `err`, its sentence said."""
    if isinstance(err, ConfigError):  # found only once the run starts (the spill's disk)
        console.error(str(err))
        return EXIT_CONFIG
    if isinstance(err, EngineGone):
        console.error(str(err))
        return EXIT_FAILED
    gave_up = _GAVE_UP.search(str(err))
    if gave_up:
        console.error(gave_up.group().strip())
        return EXIT_S3_GAVE_UP
    _LOG.error("the run failed", exc_info=err)
    first_line = (str(err).splitlines() or [""])[0][:500]
    console.error(f"the run failed: {type(err).__name__}: {first_line}")
    return EXIT_FAILED


def _run_live(config, profile: RunnerProfile, runner, options: PipelineOptions,
              console: Console) -> int:
    """Runs a live job until it is stopped (`pipeline.live`); its summary, and the exit
    code of how it ended."""
    stops = live.StopSignals()
    server = _metrics_server(config)

    @contextlib.contextmanager
    def beside_the_job(result):
        _LOG.info("forwarding %s live; Ctrl-C stops", config.subscription)
        with live.SourceWatch(config.subscription, config.pubsub_unavailable_s, stops) as watch:
            if server is not None:
                server.watch(lambda: metrics_of(result), not_ready=lambda: _not_ready(
                    watch, stops))
            status = (LiveStatus(lambda: live_metrics_of(result), config.progress_every_s,
                                 problem=watch.problem)
                      if config.progress_every_s else contextlib.nullcontext())
            with status:
                yield

    try:
        with (server or contextlib.nullcontext()), worker_environment(), engine_shielded(), \
                live.drain_file(profile.drains_on_stop) as drain_at:
            pipeline = beam.Pipeline(runner=runner, options=options)
            build(pipeline, config, profile, drain_file=drain_at)
            stopped = live.run_until_stopped(pipeline, stops, drain_at, config.drain_timeout_s,
                                             beside_the_job)
            counters = _final_counters(stopped.result, console)
            if server is not None:
                server.stopped(counters)
    except KeyboardInterrupt:
        console.error("interrupted as the live job started: nothing it pulled was written, "
                      "and Pub/Sub delivers again what was not acknowledged.")
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - Beam wraps a worker's error
        return _failed(err, console)
    if counters is not None:
        _summary(counters, live=not stopped.drained)
    if not stopped.drained:
        console.error(profile.not_drained())
        return EXIT_NOT_DRAINED
    if stopped.stopped_for:
        console.error(f"stopped after writing what it held: {stopped.stopped_for}")
        return EXIT_SOURCE_LOST
    if counters is None or not metrics.reconciled(counters):
        return EXIT_FAILED
    return 0


def _final_counters(result, console: Console) -> dict[str, int] | None:
    """A finished job's counters; None (said in one sentence) where the runner cannot
    give them."""
    try:
        return counters_of(result)
    except Exception as err:  # noqa: BLE001 - a runner that cannot say
        console.error(f"the run's counters could not be read: {type(err).__name__}: {err}")
        return None


def _metrics_server(config) -> MetricsServer | None:
    """The --metrics_port server, or None without one."""
    return MetricsServer(config.metrics_port) if config.metrics_port else None


def _not_ready(watch: live.SourceWatch, stops: live.StopSignals) -> str | None:
    """Why a live run cannot forward now, or None."""
    if stops.count:
        return "stopping"
    problem = watch.problem()
    return None if problem is None else f"{problem[0]} (for {problem[1]:.0f} s)"


def _run_bounded(config, profile: RunnerProfile, runner, options: PipelineOptions
                 ) -> dict[str, int]:
    """Runs a bounded run on `runner`, sliced where the runner needs it; returns its
    counters."""

    client = inputs.input_client(config.inputs, config.connection)

    def run_graph(build_graph) -> dict[str, int]:
        pipeline = beam.Pipeline(runner=runner, options=options)
        build_graph(pipeline)
        result = pipeline.run()
        result.wait_until_finish()
        return counters_of(result)

    if sliced.applies(config, profile):
        files = [each for pattern in config.inputs
                 for each in inputs.matched_files(pattern, client)]
        return sliced.run_sliced(config, run_graph, sliced.spill_bytes_needed(files),
                                 profile)
    if config.arrival_slice_s and not profile.slices:
        _LOG.info("not sliced: %s spills what it groups to disk itself", profile.name)
    codec = trained_codec(config)
    return run_graph(lambda pipeline: build(pipeline, config, profile, codec=codec))


def _progress(config, reported: bool, input_bytes: Callable[[], int],
              server: MetricsServer | None) -> contextlib.AbstractContextManager:
    """Progress lines while a bounded run reads and writes (unless turned off), and
    the metrics server's counters, where its workers can report (`reported`)."""
    if not reported or not (config.progress_every_s or server):
        return contextlib.nullcontext()
    listener = None
    if server is not None:
        def listener(done):
            server.update({metrics.RECORDS_READ: done["records"],
                           metrics.EVENTS_FORWARDED: done["events"],
                           metrics.FILES_WRITTEN: done["files"]})
    return ProgressReporter(input_bytes(), config.progress_every_s or 5, listener=listener,
                            quiet=not config.progress_every_s)
