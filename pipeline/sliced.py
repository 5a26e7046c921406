"""Sliced bounded runs: memory for one slice of arrival time, not the whole archive.

The runners of this machine (the FnApiRunner behind the DirectRunner, and Prism)
hold everything a GroupByKey groups in memory until the run ends, so grouping a
month of archives at once needs the month in memory. A sliced run instead:

1. reads, parses and filters the whole input once, and writes each batch, keyed
   and compressed as it would cross the shuffle, to local spill files per slice
   of arrival time (`--arrival_slice_s`, a day by default; see `transforms.spill`);
2. runs the grouping, merging and writing once per slice, earliest first, each
   slice's files deleted once it is written. A session still open at a slice's
   end is carried into the next slice, so it comes out whole. Consecutive slices
   that together spilled no more than the largest one run together: memory stays
   that of the largest slice, and small slices do not each pay a pipeline's
   start-up (about 0.5 s in-process, 3 s with worker processes or Prism).

Fixed windows and file windows never span slices (the slice length is a
multiple of the window size, and both are UTC-aligned), and every file window
belongs to exactly one slice's run, so the forwarded objects are byte-identical,
under identical keys, to an unsliced run's. Cluster runners (Flink, Spark,
Dataflow) spill their own shuffles to disk and run unsliced.

The spill needs local disk for the input as compressed batches (measured: 0.22
of the benchmark's NDJSON bytes); the run checks first that 0.35 of them (2.5 of
gzip input's bytes) are free. The directory is removed when the run ends,
failed or not, and one left by a killed run is removed by the next run that uses
the same spill directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Iterator

import apache_beam as beam

from pipeline.build import build_slice, build_spill
from pipeline.config import ConfigError, ForwarderConfig
from transforms import spill
from transforms.shuffled import ShuffleCodec

_LOG = logging.getLogger("pipeline")
SLICING_RUNNERS = frozenset({"DirectRunner", "PrismRunner"})
SPILL_PREFIX = "mparticle-s3-spill-"
# Spill bytes per input byte, with a margin over the 0.22 measured on the benchmark's
# input (NDJSON, trained dictionary). gzip input is about 7 times smaller than its NDJSON.
SPILL_PER_INPUT_BYTE = 0.35
SPILL_PER_GZIP_BYTE = 2.5
MIB = 1 << 20

RunGraph = Callable[[Callable[[beam.Pipeline], object]], dict]


def applies(config: ForwarderConfig, runner: str) -> bool:
    """Whether a run is sliced: bounded, slices asked for, a runner of this machine."""
    return not config.streaming and config.arrival_slice_s > 0 and runner in SLICING_RUNNERS


def run_sliced(
    config: ForwarderConfig, codec: ShuffleCodec, run_graph: RunGraph, spill_bytes: int
) -> dict:
    """Runs the spill pass, then every slice in time order; returns the summed counters.

    `run_graph(build_graph)` runs one pipeline that `build_graph` builds, to its
    end, and returns its counters. `spill_bytes`: about how much disk the spill takes
    (`spill_bytes_needed`).
    """
    totals: Counter = Counter()
    with spill_directory(config.spill_dir, spill_bytes) as spill_dir:
        started = time.monotonic()
        totals.update(run_graph(lambda p: build_spill(p, config, codec, spill_dir)))
        pending = spill.pending_slices(spill_dir)
        _LOG.info("input in %d slice(s) of %s in %.1f s, %.1f MiB spilled", len(pending),
                  _duration(config.arrival_slice_s), time.monotonic() - started,
                  sum(_spilled(spill_dir, start) for start in pending) / MIB)
        largest = 0
        done = 0
        while pending:
            sizes = {start: _spilled(spill_dir, start) for start in pending}
            largest = max(largest, *sizes.values())
            run = _next_run(pending, sizes, largest)
            last = len(run) == len(pending)
            started = time.monotonic()
            totals.update(run_graph(
                lambda p, run=run, last=last: build_slice(p, config, codec, spill_dir, run, last)
            ))
            done += len(run)
            _LOG.info("slice(s) %d-%d of %d, from %s: %.1f MiB spilled, written in %.1f s",
                      done - len(run) + 1, done, done + len(pending) - len(run), _utc(run[0]),
                      sum(sizes[start] for start in run) / MIB, time.monotonic() - started)
            for start in run:
                shutil.rmtree(spill.slice_folder(spill_dir, start))
            pending = spill.pending_slices(spill_dir)  # sessions carried on may add one
    return dict(totals)


def _next_run(pending: list[int], sizes: dict[int, int], largest: int) -> list[int]:
    """The slices to run next, earliest first: the earliest, and after it as many as fit
    together in the spill bytes of the largest slice (so memory stays that of the
    largest slice, and small slices do not each pay a pipeline's start-up)."""
    run, total = [pending[0]], sizes[pending[0]]
    for start in pending[1:]:
        if total + sizes[start] > largest:
            break
        run.append(start)
        total += sizes[start]
    return run


def _spilled(spill_dir: str, start: int) -> int:
    return sum(os.path.getsize(path) for path in spill.slice_files(spill_dir, start))


@contextlib.contextmanager
def spill_directory(root: str | None, needed_bytes: int) -> Iterator[str]:
    """A new spill directory under `root` (default: the system's temporary one),
    removed at the end whatever happens; refuses to start without the space."""
    root = root or tempfile.gettempdir()
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--spill_dir {root!r} cannot be made: {err.strerror}.") from None
    remove_abandoned(root)
    free = shutil.disk_usage(root).free
    if free < needed_bytes:
        raise ConfigError(
            f"--spill_dir {root!r} has {free / MIB:,.0f} MiB free; a sliced run of this input "
            f"needs about {needed_bytes / MIB:,.0f} MiB there. Give a --spill_dir with more space."
        )
    path = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def spill_bytes_needed(files: list[tuple[str, int]]) -> int:
    """About how much disk the spill of these (path, size) input files takes."""
    return int(sum(size * (SPILL_PER_GZIP_BYTE if path.endswith(".gz") else SPILL_PER_INPUT_BYTE)
                   for path, size in files))


def remove_abandoned(root: str) -> None:
    """Removes spill directories whose run no longer exists (killed, power lost)."""
    for name in os.listdir(root):
        found = re.fullmatch(re.escape(SPILL_PREFIX) + r"(\d+)-\w+", name)
        if found and not _alive(int(found.group(1))):
            _LOG.info("removing %s, left by an earlier run that did not end", name)
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _utc(start_s: int) -> str:
    return datetime.fromtimestamp(start_s, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day(s)"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour(s)"
    return f"{seconds} s"
