"""Which engine runs the pipeline: the `--runner` names users type → a Beam runner.

The DirectRunner name maps to Beam's FnApiRunner for bounded runs and to the
BundleBasedDirectRunner for live ones (Beam's DirectRunner would first try to
download Prism). Prism runs the binary that `./run_local.sh` builds with
`go build` into the virtualenv, from Beam's Go module with the patches of
`tools/prism` (or one on PATH, or `--prism_location`), and never downloads one.
As on Flink and Spark, the Python code then runs in an SDK harness process of its
own, which Prism starts through a loopback worker pool (unless
`--environment_type` says otherwise).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterator

from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    StandardOptions,
    WorkerOptions,
)

from pipeline.errors import ConfigError
from transforms.batching import LiveSessions

_LOG = logging.getLogger(__name__)

# What a user may type (any case, with or without "Runner") → the runner.
_RUNNERS = {
    "direct": "DirectRunner",
    "fnapi": "DirectRunner",
    "bundlebaseddirect": "BundleBasedDirectRunner",
    "prism": "PrismRunner",
    "flink": "FlinkRunner",
    "spark": "SparkRunner",
    "dataflow": "DataflowRunner",
    "portable": "PortableRunner",
    "dask": "DaskRunner",
}
KNOWN = ("DirectRunner, PrismRunner, DaskRunner, FlinkRunner, SparkRunner, DataflowRunner or "
         "PortableRunner")
# Runners whose job server (Java) reads options Python does not declare, such as
# Flink's --checkpointing_interval: flags unknown here are passed on to them.
JAVA_JOB_SERVER = frozenset({"FlinkRunner", "SparkRunner", "PortableRunner", "DataflowRunner"})
# The runners of this machine, which hold what a GroupByKey groups in memory in
# their own process: bounded runs on them may be sliced (`pipeline.sliced`). Cluster
# runners spill their own shuffles to disk.
SLICING = frozenset({"DirectRunner", "PrismRunner"})


# Without --runner: bounded runs on the DirectRunner (the FnApiRunner in-process, sliced
# on local disk); live runs on Prism, whose forwarder's own Pub/Sub source acknowledges
# a message once what it became is committed, and which drains a backlog many times
# faster than the DirectRunner's BundleBasedDirectRunner (README, Runners).
DEFAULT_BOUNDED = "DirectRunner"
DEFAULT_LIVE = "PrismRunner"


def canonical(given: str | None, streaming: bool = False) -> str | None:
    """The runner a `--runner` value names (any case, with or without "Runner"; none:
    DEFAULT_LIVE or DEFAULT_BOUNDED), or None for one this forwarder does not run on."""
    given = given or (DEFAULT_LIVE if streaming else DEFAULT_BOUNDED)
    return _RUNNERS.get(given.lower().removesuffix("runner"))


def runner_name(options: PipelineOptions) -> str:
    """The runner `--runner` names, or the default for the run (`canonical`);
    ConfigError (one sentence) for one it does not know."""
    standard = options.view_as(StandardOptions)
    given = standard.runner
    name = canonical(given, bool(standard.streaming))
    if name is None:
        raise ConfigError(f"--runner {given!r} is not a runner this forwarder runs on: "
                          f"use {KNOWN}.")
    return name


def prism_binary(options: PipelineOptions) -> str:
    """`--prism_location`, else the virtualenv's `prism`, else one on PATH."""
    given = options.view_as(PrismRunnerOptions).prism_location
    if given:
        if not os.access(given, os.X_OK):
            raise ConfigError(f"--prism_location {given!r} is not an executable file.")
        return given
    beside_python = os.path.join(os.path.dirname(sys.executable), "prism")
    found = beside_python if os.access(beside_python, os.X_OK) else shutil.which("prism")
    if not found:
        raise ConfigError(
            "--runner=PrismRunner needs the prism binary: ./run_local.sh builds it into "
            ".venv/bin with go build, or pass --prism_location=PATH."
        )
    return found


# Runners that run the pipeline through a job server (Job API and Fn API): Beam's
# module and class of each.
_PORTABLE_CLASSES = {
    "PrismRunner": ("apache_beam.runners.portability.prism_runner", "PrismRunner"),
    "FlinkRunner": ("apache_beam.runners.portability.flink_runner", "FlinkRunner"),
    "SparkRunner": ("apache_beam.runners.portability.spark_runner", "SparkRunner"),
    "PortableRunner": ("apache_beam.runners.portability.portable_runner", "PortableRunner"),
}
PORTABLE = frozenset(_PORTABLE_CLASSES)


def pubsub_readers(name: str, asked: int = 0) -> int:
    """How many PubSubSource readers a runner runs in each read (`asked`, else its own
    number); 0: Beam's ReadFromPubSub (the DirectRunner and Dataflow run it natively).
    On Prism one: its readers are reads of their own (`reading_harnesses`)."""
    if name not in PORTABLE:
        return 0
    return 1 if name == "PrismRunner" else asked or 2


# Prism's live reads, each in an SDK harness of its own, without --pubsub_readers.
PRISM_READS = 2


def reading_harnesses(name: str, asked: int = 0) -> int:
    """How many reads of the subscription a live run makes, each in an SDK harness of
    its own as far as the first shuffle (`transforms.batching.in_reading_harness`): on
    Prism, `asked`, else PRISM_READS; one on other runners, which run a read's readers
    in parallel themselves.

    Prism starts a harness process per environment, and the one that reads, parses,
    stamps and packs files was the limit of a drain (one Python process: one core at
    most; README, Performance → Live, for the figures). Several readers in that one
    harness gained nothing; and there they stalled: with two, at 1,000 messages a
    second a few dozen messages of a window reached the first GroupByKey after Prism
    had fired that window, and from then on Prism held the next stage's watermark
    (the steady live benchmark stalled in 10 of 14 runs, with a watermark that held
    only what was not yet emitted, since changed). Reads of their own are stages of
    their own, each with its own watermark (Prism tracks one output watermark per
    stage, whatever its readers), so the shuffle's is the least of theirs."""
    return (asked or PRISM_READS) if name == "PrismRunner" else 1


def drains_on_stop(name: str) -> bool:
    """Whether a stopped live run drains (`transforms.io.pubsub_source`): where the SDK
    harness shares the launcher's machine and environment, as Prism's does. On a
    Flink or Spark cluster the workers are elsewhere: stop with the runner's drain."""
    return name == "PrismRunner"


def engine_name(runner) -> str:
    """What actually runs: the FnApiRunner, not "DirectRunner", for a bounded direct run."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    if name == "FnApiRunner":
        return "FnApiRunner (what --runner=DirectRunner runs for bounded input)"
    if name == "BundleBasedDirectRunner":
        return "BundleBasedDirectRunner (what --runner=DirectRunner runs for live input)"
    return name


# Prism's live sessions are held under one of this many shards of the device
# (`LiveSessions`): Prism keeps a state entry for every key it has seen.
PRISM_SESSION_SHARDS = 4096


def live_sessions(name: str, harnesses: int = 0) -> LiveSessions:
    """How live sessions are kept (`transforms.batching.LiveSessions`). Per device in
    state with an event-time timer (`_LiveSessionsFn`), which needs a runner that
    holds the watermark at a pending timer: Flink, Spark, Dataflow; and Prism, under
    one of `PRISM_SESSION_SHARDS` shards of the device, because Prism 2.77 keeps an
    entry for each key of a stateful stage in the global window, emptied but never
    dropped (`engine/elementmanager.go`, `PersistBundle`), so a run keyed by device
    grows with every device it sees. Not the DirectRunner (its
    BundleBasedDirectRunner holds no watermark for a user's timer), which merges
    Beam's session windows instead; Prism 2.77 does not merge those for a live
    source. On Prism the stage that keeps the sessions has an SDK harness of its own
    (Prism starts one harness process per environment, so one environment would leave
    a whole live run to one Python process: one core at most; README, Performance →
    Live, for the figures), or `harnesses` of their own, each with its part of the
    shards, where one harness is the limit; live fixed windows of one read are merged
    in the first (of several reads, in the reads' harnesses); other runners have their
    own parallelism and ignore it."""
    if name == "DirectRunner":
        return LiveSessions(by_timer=False)
    if name == "PrismRunner":
        return LiveSessions(shards=PRISM_SESSION_SHARDS, harnesses=harnesses or 1)
    return LiveSessions()


def batches_late_files(name: str) -> bool:
    """Whether a live run's late batches of a file window go out together, a pane
    `--file_flush_s` after the first of them (`transforms.batching.late_firing_windowing`),
    rather than a pane, and so a file, each: the batches a dead reader held, come again
    all at once, would make a small file apiece. Such a pane is only safe on a runner
    that fires a window's pending elements when the window closes, or a late batch
    that came within that time of its window's end plus the allowed lateness (or of
    the end of a drained run) would be dropped: Prism (its closing firing,
    `engine/elementmanager.go`), Flink, Spark and Dataflow (Beam's ReduceFnRunner fires
    a non-empty pane at a window's close) do. Not the DirectRunner: Python's trigger
    driver fires no pane when a window closes."""
    return name != "DirectRunner"


def dask_module():
    """`pipeline.dask_runner`, or ConfigError naming the extra that installs Dask."""
    try:
        from pipeline import dask_runner
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in ("dask", "distributed"):
            raise ConfigError(
                "--runner=dask needs Dask, which the forwarder's dask extra installs: "
                "pip install 'mparticle-s3-forwarder[dask]' (from a clone: pip install "
                "'.[dask]')."
            ) from None
        raise
    return dask_runner


def reports_progress(options: PipelineOptions) -> bool:
    """Whether a bounded run's workers can tell the launcher what they have done
    (`transforms.io.progress`): processes of this machine, which inherit its
    environment (the DirectRunner's, Prism's, a local Dask cluster's). Not a cluster's
    elsewhere (Flink, Spark, Dataflow, a Dask scheduler's at --dask_client_address):
    their own dashboards show progress."""
    name = runner_name(options)
    if name == "DaskRunner":
        return not options.view_as(dask_module().DaskOptions).address
    return name in SLICING


class _JobStreamsWithoutDeadline:
    """The job service, with the job's state and message streams opened without a deadline.

    Beam's `JobServiceHandle.run` opens both streams with `timeout=job_server_timeout`
    (300 s by default), a deadline for the whole call: every job on a portable runner
    (Prism, Flink, Spark) then ends in DEADLINE_EXCEEDED after that long, live or
    bounded, though the job itself goes on. The timeout still applies to the requests
    it is meant for (options, Prepare, staging); the streams last as long as the job.
    """

    def __init__(self, job_service):
        self._job_service = job_service

    def __getattr__(self, name: str):
        return getattr(self._job_service, name)

    def GetStateStream(self, request, timeout=None, **kwargs):  # noqa: N802 (gRPC's name)
        return self._job_service.GetStateStream(request, **kwargs)

    def GetMessageStream(self, request, timeout=None, **kwargs):  # noqa: N802 (gRPC's name)
        return self._job_service.GetMessageStream(request, **kwargs)


class _UntilTheJobEnds:
    """A portable runner whose wait for the job lasts as long as the job
    (see `_JobStreamsWithoutDeadline`)."""

    def create_job_service_handle(self, job_service, options):
        handle = super().create_job_service_handle(job_service, options)
        handle.job_service = _JobStreamsWithoutDeadline(handle.job_service)
        return handle


def portable_runner(name: str):
    """Beam's runner `name` (one of PORTABLE), waiting on its job without a deadline."""
    module, class_name = _PORTABLE_CLASSES[name]
    beam_class = getattr(importlib.import_module(module), class_name)
    return type(class_name, (_UntilTheJobEnds, beam_class), {})()


def current_metrics(result):
    """A job's metrics as they are now. Beam's portable `PipelineResult.metrics()`
    keeps its first answer for good (`portable_runner.py`: `if not self._metrics`):
    right once a job has finished, stale while it runs; so it is asked afresh."""
    if hasattr(result, "_metrics"):
        result._metrics = None  # noqa: SLF001 - the cache has no public reset
    return result.metrics()


def make_runner(options: PipelineOptions, input_bytes: Callable[[], int] | None = None):
    """The runner to use; fills in Prism's binary so that Beam never downloads one.
    `input_bytes`: the size of a bounded run's input, asked by a Dask run, which sizes
    its partitions by it, and by a DirectRunner run, which takes a worker process per
    core for a large one (`_workers_for_large_input`)."""
    name = runner_name(options)
    standard = options.view_as(StandardOptions)
    # Worker processes log as the launcher does: the forwarder's lines, and only
    # Beam's warnings.
    worker = options.view_as(WorkerOptions)
    if worker.default_sdk_harness_log_level is None:
        worker.default_sdk_harness_log_level = "WARNING"
        worker.sdk_harness_log_level_overrides = {
            "transforms": "INFO", **(worker.sdk_harness_log_level_overrides or {})
        }
    if name == "DirectRunner" and standard.streaming or name == "BundleBasedDirectRunner":
        return bundle_based_direct_runner()
    if name == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        if input_bytes is not None:
            _workers_for_large_input(options, input_bytes)
        return FnApiRunner()
    if name == "DaskRunner":
        dask_runner = dask_module()
        dask_runner.check_options(options)
        return dask_runner.DaskRunner(input_bytes() if input_bytes else None)
    if name == "PrismRunner":
        options.view_as(PrismRunnerOptions).prism_location = prism_binary(options)
        if not options.view_as(PortableOptions).environment_type:
            _sdk_harness_in_its_own_process(options)
        if standard.streaming:
            _no_splits_of_bundles_with_timers(options)
    if name in PORTABLE:
        return portable_runner(name)
    return name


def bundle_based_direct_runner():
    """Beam's BundleBasedDirectRunner (what a live DirectRunner run runs), with the
    counters of every bundle kept (`_count_every_bundle`)."""
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

    _count_every_bundle()
    return BundleBasedDirectRunner()


def _count_every_bundle() -> None:
    """Beam 2.77's BundleBasedDirectRunner keeps the counters of a step's first bundle
    on a worker thread and loses those of the later ones: the thread's StateSampler
    caches a step's states with the metrics container of the first bundle it ran
    (`StateSampler.scoped_state`), so a later bundle counts into that container while
    its result reports the new, empty one (`TransformExecutor.call`): a live run's late
    batches, duplicates and forwarded events would go uncounted. Here each attempt of a
    bundle reports the container its states hold, emptied first: the bundle's own
    counts (a failed attempt's are dropped, as a retried bundle's should be). Installed
    once per process, on the first live DirectRunner run."""
    from apache_beam.runners.direct import executor

    attempt_call = executor.TransformExecutor.attempt_call
    if getattr(attempt_call, "counts_every_bundle", False):
        return

    def attempt_counted(self, metrics_container, side_inputs, start, process, finish):
        held = process.metrics_container
        if held is not None and held is not metrics_container:
            held.reset()
            metrics_container = held
        return attempt_call(self, metrics_container, side_inputs, start, process, finish)

    attempt_counted.counts_every_bundle = True
    executor.TransformExecutor.attempt_call = attempt_counted


# A bounded DirectRunner run without --direct_num_workers or --direct_running_mode takes
# a worker process per core once its input is this large: below it, starting the
# workers costs more than they save (README, Runners: the figures).
WORKERS_FROM_BYTES = 64 * 2**20


def _workers_for_large_input(options: PipelineOptions, input_bytes: Callable[[], int]) -> None:
    # The flags as given (a value equal to Beam's default, 1 worker, is a choice too).
    flags = options._flags  # noqa: SLF001 - PipelineOptions keeps them only there
    given = any(flag.startswith(("--direct_num_workers", "--direct_running_mode"))
                for flag in flags)
    cores = os.cpu_count() or 1
    if given or cores < 2:
        return
    size = input_bytes()
    if size < WORKERS_FROM_BYTES:
        return
    direct = options.view_as(DirectOptions)
    direct.direct_num_workers = cores
    direct.direct_running_mode = "multi_processing"
    _LOG.info("%d worker processes (one per core) for %.0f MiB of input", cores, size / 2**20)


def _sdk_harness_in_its_own_process(options: PipelineOptions) -> None:
    """Prism's loopback workers run in the launcher unless this experiment asks for a
    process (Beam starts it as `python` from PATH: see `worker_environment`)."""
    options.view_as(DebugOptions).add_experiment("use_loopback_process_worker")


def _no_splits_of_bundles_with_timers(options: PipelineOptions) -> None:
    """Prism 2.77 splits a running bundle that makes no progress between two of its
    progress requests, and a bundle of the live sessions' stage holds timers, which it
    splits wrongly (https://github.com/apache/beam/issues/35771, "Unexpected split on a
    bundle with timers" in the log): its residual's timers fire again or never, and
    sessions are written twice or lost. A live run asks for no splits (the source still
    checkpoints itself); bounded runs keep them (no stage of theirs has timers)."""
    options.view_as(DebugOptions).add_experiment("prism_disable_sdf_split")


# glibc gives each thread that allocates at once an arena of its own, up to eight per
# core, and an arena keeps what was freed in it: an SDK harness's gRPC, puller and
# upload threads made its RSS grow through a long live run, with most of the growth
# freed memory (README, Performance → Live: 2026-12-02, sixth session, the figures).
WORKER_MALLOC_ARENAS = 2

_WORKER_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_site")


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """The environment that the worker processes a run starts inherit, for the run,
    restored after it: this Python first on PATH (Beam starts Prism's loopback
    process workers as `python`), and `worker_site` first on PYTHONPATH, whose
    sitecustomize sets a worker up at its start as the launcher is; and Dask's
    processes (`pipeline.dask_runner`) log only what goes wrong, as Beam's do, unless
    DASK_LOGGING__DISTRIBUTED says otherwise; and glibc's malloc in the workers keeps
    WORKER_MALLOC_ARENAS arenas, unless MALLOC_ARENA_MAX says otherwise."""
    saved = {name: os.environ.get(name) for name in (
        "PATH", "PYTHONPATH", "DASK_LOGGING__DISTRIBUTED", "MALLOC_ARENA_MAX")}
    _prepend("PATH", os.path.dirname(sys.executable))
    _prepend("PYTHONPATH", _WORKER_SITE)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("MALLOC_ARENA_MAX", str(WORKER_MALLOC_ARENAS))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _prepend(variable: str, directory: str) -> None:
    entries = os.environ.get(variable, "")
    if entries.split(os.pathsep)[0] != directory:
        os.environ[variable] = directory + (os.pathsep + entries if entries else "")


# prctl(2)'s request for the signal a process gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def _end_with_launcher() -> Callable[[], None] | None:
    """What a child started from the launcher's main thread runs before its program:
    SIGTERM to it when the launcher ends, however it ends (Linux; elsewhere None)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def engine_shielded() -> Iterator[None]:
    """Every process the launcher starts meanwhile (Prism, the SDK harnesses Beam's
    worker pool starts for it) gets a process group of its own, so the SIGINT a
    terminal sends its whole foreground group at Ctrl-C reaches the launcher alone,
    which drains the run; the engine ends when the launcher asks it to, or with it.

    Beam starts them through `subprocess.Popen` (`utils.subprocess_server`,
    `runners.worker.worker_pool_main`), which is what is replaced for the run. One
    started from the main thread (Prism) also gets SIGTERM when the launcher dies. A
    child's death signal follows the thread that started it, not the process, so
    the SDK harnesses, started from the worker pool's gRPC threads, go without: they
    end when their channel to Prism breaks."""
    original = subprocess.Popen
    end_with_launcher = _end_with_launcher()

    class _OwnProcessGroup(original):
        def __init__(self, *args, **kwargs):
            if not kwargs.get("start_new_session") and kwargs.get("process_group") is None:
                kwargs["process_group"] = 0
                if (end_with_launcher is not None and kwargs.get("preexec_fn") is None
                        and threading.current_thread() is threading.main_thread()):
                    kwargs["preexec_fn"] = end_with_launcher
            super().__init__(*args, **kwargs)

    subprocess.Popen = _OwnProcessGroup
    try:
        yield
    finally:
        subprocess.Popen = original
