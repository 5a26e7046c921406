"""Test pipelines on named local engines (no Prism download, ever), and `Replayed`, an
unbounded source that replays records in real time as Pub/Sub delivers them."""

from __future__ import annotations

import time

from apache_beam import coders
from apache_beam.io.unbounded_source import CheckpointMark, UnboundedReader, UnboundedSource
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from pipeline.runners.direct import bundle_based_direct_runner
from transforms.values import RawRecord


def batch_pipeline() -> TestPipeline:
    """Bounded: the FnApiRunner, as `python -m pipeline` runs the DirectRunner."""
    return TestPipeline(runner=FnApiRunner(), options=PipelineOptions([]))


def streaming_pipeline() -> TestPipeline:
    """Unbounded, for TestStream: the BundleBasedDirectRunner in streaming mode, as a
    live DirectRunner run has it."""
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(runner=bundle_based_direct_runner(), options=options)


class Replayed(UnboundedSource):
    """Records as a live source delivers them: in the list's order (publish order,
    but for a record put behind on purpose), stamped with their publish time, each
    when its time comes on a clock running `speedup` times faster than the wall clock
    (so a bundle holds what came since the last); the watermark a second behind that
    clock or the next record, whichever is earlier, never going back, as
    PubSubSource's; `tail_s` after the last record, the end of time. Unbounded, as
    PubSubSource is: Prism runs it as it runs Pub/Sub."""

    def __init__(self, records: list[RawRecord], speedup: float, tail_s: float):
        self._records = records
        self._speedup = speedup
        self._tail_ms = tail_s * 1000

    def split(self, desired_num_splits, options=None):
        return [self]

    def create_reader(self, options, checkpoint_mark):
        mark = checkpoint_mark or _ReplayMark(0, time.time(), 0)
        at, started, watermark_us = mark.at, mark.started, mark.watermark_us
        return _ReplayReader(self._records, self._speedup, self._tail_ms, at, started,
                             watermark_us)

    def get_checkpoint_mark_coder(self):
        return coders.PickleCoder()

    def default_output_coder(self):
        return coders.registry.get_coder(RawRecord)


class _ReplayReader(UnboundedReader):
    def __init__(self, records: list[RawRecord], speedup: float, tail_ms: float, at: int,
                 started: float, watermark_us: int):
        self._records, self._speedup, self._tail_ms = records, speedup, tail_ms
        self._at, self._started, self._watermark_us = at, started, watermark_us

    def _now_ms(self) -> float:
        """The replay's clock."""
        return (self._records[0].publish_time_ms
                + (time.time() - self._started) * 1000 * self._speedup)

    def start(self) -> bool:
        return self.advance()

    def advance(self) -> bool:
        if self._at >= len(self._records):
            return False
        if self._records[self._at].publish_time_ms > self._now_ms():
            return False  # not yet: the bundle ends here
        self._current = self._records[self._at]
        self._at += 1
        return True

    def get_current(self) -> RawRecord:
        return self._current

    def get_current_timestamp(self) -> Timestamp:
        return Timestamp(micros=self._current.publish_time_ms * 1000)

    def get_watermark(self) -> Timestamp:
        now_ms = self._now_ms()
        if self._at >= len(self._records):
            if now_ms > self._records[-1].publish_time_ms + self._tail_ms:
                return MAX_TIMESTAMP
            next_ms = now_ms
        else:
            next_ms = min(self._records[self._at].publish_time_ms, now_ms)
        self._watermark_us = max(self._watermark_us, int(next_ms - 1000) * 1000)
        return Timestamp(micros=self._watermark_us)

    def get_checkpoint_mark(self):
        return _ReplayMark(self._at, self._started, self._watermark_us)


class _ReplayMark(CheckpointMark):
    """Where a replay is: the next record, the wall-clock time of the first, the
    watermark reported in µs. Nothing to acknowledge on finalization."""

    def __init__(self, at: int, started: float, watermark_us: int):
        self.at, self.started, self.watermark_us = at, started, watermark_us

    def finalize_checkpoint(self):
        pass
