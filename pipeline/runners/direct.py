"""The DirectRunner's two engines: the FnApiRunner for bounded runs (a worker process
per core for a large input) and the BundleBasedDirectRunner for live ones (with a fix
to its counters)."""

from __future__ import annotations

import logging
import os
from typing import Callable

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

_LOG = logging.getLogger(__name__)


def fn_api_runner(options: PipelineOptions, input_bytes: Callable[[], int] | None):
    """Beam's FnApiRunner (what a bounded DirectRunner run runs), with a worker process
    per core for a large input (`_workers_for_large_input`)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    if input_bytes is not None:
        _workers_for_large_input(options, input_bytes)
    return FnApiRunner()


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

