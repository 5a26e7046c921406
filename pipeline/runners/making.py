"""Making the runner a run names: once per run, with the options it needs."""

from __future__ import annotations

import importlib
from typing import Callable

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, WorkerOptions

from pipeline.errors import ConfigError
from pipeline.runners import direct, prism
from pipeline.runners.names import PORTABLE, PORTABLE_CLASSES, runner_name


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
    module, class_name = PORTABLE_CLASSES[name]
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
    """The runner to use, made once per run; fills in Prism's binary so that Beam never
    downloads one. `input_bytes`: the size of a bounded run's input, asked by a Dask
    run, which sizes its partitions by it, and by a DirectRunner run, which takes a
    worker process per core for a large one (`direct.fn_api_runner`)."""
    name = runner_name(options)
    # Worker processes log as the launcher does: the forwarder's lines, and only
    # Beam's warnings.
    worker = options.view_as(WorkerOptions)
    if worker.default_sdk_harness_log_level is None:
        worker.default_sdk_harness_log_level = "WARNING"
        worker.sdk_harness_log_level_overrides = {
            "transforms": "INFO", **(worker.sdk_harness_log_level_overrides or {})
        }
    streaming = options.view_as(StandardOptions).streaming
    if name == "DirectRunner" and streaming or name == "BundleBasedDirectRunner":
        return direct.bundle_based_direct_runner()
    if name == "DirectRunner":
        return direct.fn_api_runner(options, input_bytes)
    if name == "DaskRunner":
        dask_runner = dask_module()
        dask_runner.check_options(options)
        return dask_runner.DaskRunner(input_bytes() if input_bytes else None)
    if name == "PrismRunner":
        prism.configure(options)
    if name in PORTABLE:
        return portable_runner(name)
    return name


def dask_module():
    """`pipeline.runners.dask_runner`, or ConfigError naming the extra that installs Dask."""
    try:
        from pipeline.runners import dask_runner
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in ("dask", "distributed"):
            raise ConfigError(
                "--runner=dask needs Dask, which the forwarder's dask extra installs: "
                "pip install 'mparticle-s3-forwarder[dask]' (from a clone: pip install "
                "'.[dask]')."
            ) from None
        raise
    return dask_runner

