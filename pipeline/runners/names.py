"""The `--runner` names users type → the runner each names, and what the launcher
calls it."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.errors import ConfigError

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


# Runners that run the pipeline through a job server (Job API and Fn API): Beam's
# module and class of each.
PORTABLE_CLASSES = {
    "PrismRunner": ("apache_beam.runners.portability.prism_runner", "PrismRunner"),
    "FlinkRunner": ("apache_beam.runners.portability.flink_runner", "FlinkRunner"),
    "SparkRunner": ("apache_beam.runners.portability.spark_runner", "SparkRunner"),
    "PortableRunner": ("apache_beam.runners.portability.portable_runner", "PortableRunner"),
}
PORTABLE = frozenset(PORTABLE_CLASSES)


def engine_name(runner) -> str:
    """What actually runs: the FnApiRunner, not "DirectRunner", for a bounded direct run."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    if name == "FnApiRunner":
        return "FnApiRunner (what --runner=DirectRunner runs for bounded input)"
    if name == "BundleBasedDirectRunner":
        return "BundleBasedDirectRunner (what --runner=DirectRunner runs for live input)"
    return name
