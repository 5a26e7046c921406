"""Everything Prism, Beam's portable runner, needs of the forwarder and changes in it.

- Where its binary is (`binary`): the one `./run_local.sh` builds with `go install`
  into the virtualenv (from Beam's Go module with the patches of `pipeline/engine`),
  else one on PATH, else `--prism_location`; Beam never downloads one.
- Its options (`configure`): the SDK harness in a process of its own, and in a live
  run no splits of bundles that hold timers.
- Where steps run (`in_process`): Prism starts an SDK harness process per environment,
  so a step given an environment of its own (`SdkHarnessHint`) runs in a Python
  process of its own; one environment would leave a live run to one process, one
  core at most. `RunnerProfile` says which steps go apart (`pipeline.runners.profile`).
- How live runs are shaped on it (`READS`, `SESSION_SHARDS`): see `profile`.
"""

from __future__ import annotations

import os
import shutil
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DebugOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    StandardOptions,
)
from apache_beam.transforms.resources import ResourceHint

from pipeline.errors import ConfigError

# Live reads of the subscription, each in an SDK harness of its own, without
# --pubsub_readers. Prism tracks one output watermark per stage, whatever its readers,
# so several readers in one read's stage share one watermark; reads of their own are
# stages of their own, and the shuffle's watermark is the least of theirs.
READS = 2

# Live sessions are held under one of this many shards of the device: Prism 2.77 keeps
# an entry for each key of a stateful stage in the global window, emptied but never
# dropped (`engine/elementmanager.go`, `PersistBundle`), so state keyed by device would
# grow with every device a run sees.
SESSION_SHARDS = 4096


def binary(options: PipelineOptions) -> str:
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


def configure(options: PipelineOptions) -> None:
    """Prism's options for a run: its binary (`binary`), the SDK harness in a process
    of its own, and in a live run no splits of bundles that hold timers."""
    options.view_as(PrismRunnerOptions).prism_location = binary(options)
    if not options.view_as(PortableOptions).environment_type:
        # Prism's loopback workers run in the launcher unless this experiment asks for a
        # process (Beam starts it as `python` from PATH: `processes.worker_environment`).
        options.view_as(DebugOptions).add_experiment("use_loopback_process_worker")
    if options.view_as(StandardOptions).streaming:
        # Prism 2.77 splits a running bundle that makes no progress between two of its
        # progress requests, and a bundle of the live sessions' stage holds timers,
        # which it splits wrongly (https://github.com/apache/beam/issues/35771,
        # "Unexpected split on a bundle with timers" in the log): its residual's timers
        # fire again or never, and sessions are written twice or lost. A live run asks
        # for no splits (the source still checkpoints itself); bounded runs keep them
        # (no stage of theirs has timers).
        options.view_as(DebugOptions).add_experiment("prism_disable_sdf_split")


class SdkHarnessHint(ResourceHint):
    """A resource hint that asks for no resource: a transform with another value of
    it is in another environment than the pipeline's default one, and Prism, which
    starts an SDK harness per environment, runs its stages in a harness process of
    their own. Runners that do not know it ignore it (Prism reads no resource hint)."""

    urn = "mparticle-s3-forwarder:resources:sdk_harness:v1"


def in_process(transform: beam.PTransform, name: str) -> beam.PTransform:
    """`transform` in the SDK harness process called `name` (an environment of its
    own); "" keeps it in the pipeline's default one. The hint is registered here, by
    the code that builds a graph for Prism, not when a module is imported."""
    if not name:
        return transform
    ResourceHint.register_resource_hint("sdk_harness", SdkHarnessHint)  # the same each time
    return transform.with_resource_hints(sdk_harness=name)
