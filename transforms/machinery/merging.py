"""Merging one device's batches of one window into its outbound batch (`Merger`),
counted, with the dead letters of a group that cannot be merged: the rule every way
to the windows shares (`transforms.batching`, `transforms.live_sessions`, and the
sliced runs' workers, `transforms.spill`)."""

from __future__ import annotations

import logging
from typing import Iterator

import apache_beam as beam
from apache_beam import pvalue

from transforms import metrics
from transforms.io import inputs, locations, s3
from transforms.machinery.shuffled import ShuffleCodec, ShuffledBatch
from transforms.rules.dead_letters import AFTER_SETTINGS, DEAD_LETTERS, dead_letter, unexpected
from transforms.rules.grouping import arrival_order, merge_batches, split_per_event
from transforms.values import ForwardedBatch

__all__ = ["Merger", "MergingFn", "per_event"]

_LOG = logging.getLogger(__name__)


class Merger:
    """One device's batches of one window → ForwardedBatch, counted.

    Counters are made in a DoFn's `setup` (`Merger(codec)` there) and counted in
    the bundle's thread.
    """

    STAGE = "merge"

    def __init__(self, codec: ShuffleCodec, input_connection: s3.S3Connection | None = None):
        """`input_connection`: how to read the input again for a dead letter's record."""
        self._codec = codec
        self._input_connection = input_connection
        self._duplicates = metrics.counter(metrics.EVENTS_DUPLICATE)
        self._late_batches = metrics.counter(metrics.LATE_BATCHES)
        self._late_events = metrics.counter(metrics.LATE_EVENTS)
        self._events_dead = metrics.counter(metrics.EVENTS_DEAD_LETTERED)

    def merged(self, device: str, shuffled: list[ShuffledBatch], late: bool = False) -> Iterator:
        """The ForwardedBatch; or, for a group that cannot be merged, each of its
        batches as a dead letter in DEAD_LETTERS."""
        try:
            forwarded = self._merged(device, shuffled, late)
        except Exception as err:  # no record may stop the run: dead letters say why
            for item in shuffled:
                yield pvalue.TaggedOutput(DEAD_LETTERS, self._dead_letter(item, err))
            return
        yield forwarded

    def _dead_letter(self, item: ShuffledBatch, err: Exception) -> dict:
        """The batch's record as it came, read again from its file; on live input (the
        message is gone) the batch as it left the settings, which says so."""
        self._events_dead.inc(item.events)
        try:
            parts = item.parts(self._codec)
        except Exception:  # what crossed cannot be read: the record, or the source, says
            parts = None
        client = None
        if self._input_connection and locations.is_s3(item.source):
            client = s3.make_client(self._input_connection)
        raw = inputs.record_at(item.source, client)
        if raw is not None:
            return dead_letter(item.source, self.STAGE, unexpected(err), raw)
        if parts is None:  # neither the record nor the batch: the source says where it was
            return dead_letter(item.source, self.STAGE, unexpected(err), None)
        return dead_letter(item.source, self.STAGE, unexpected(err), parts.as_sent(),
                           AFTER_SETTINGS)

    def _merged(self, device: str, shuffled: list[ShuffledBatch], late: bool) -> ForwardedBatch:
        ordered = sorted(shuffled, key=arrival_order)
        merged = merge_batches([(item.arrival_ms, item.parts(self._codec)) for item in ordered])
        self._duplicates.inc(merged.duplicates)
        if late:
            self._late_batches.inc()
            self._late_events.inc(merged.event_count)
            # Also logged: late data is rare, and worth a line where it happens.
            _LOG.info("late data for %s: %d events in a further batch", device, merged.event_count)
        newest = ordered[-1]
        return ForwardedBatch(merged.line, merged.first_event_ms, newest.app_name, device,
                              newest.arrival_ms, merged.event_count)


class MergingFn(beam.DoFn):
    """A DoFn that merges a device's batches with a `Merger` made in its `setup`."""

    def __init__(self, codec: ShuffleCodec, input_connection: s3.S3Connection | None = None):
        self._codec = codec
        self._input_connection = input_connection

    def setup(self):
        self._merger = Merger(self._codec, self._input_connection)


def per_event(keyed: tuple[str, ShuffledBatch], codec: ShuffleCodec) -> Iterator[ForwardedBatch]:
    """With Send as Batch off: a batch's events, each its own outbound batch
    (`grouping.split_per_event`)."""
    device, shuffled = keyed
    for line, first_event_ms, events in split_per_event(shuffled.parts(codec)):
        yield ForwardedBatch(line, first_event_ms, shuffled.app_name, device,
                             shuffled.arrival_ms, events)
