"""The batching modes (SPEC section 4), each one strategy, and the one table that picks
it (`MODES`): everything that differs between them is a method or a field here.

- FIXED (Send as Batch, the default): UTC-aligned fixed windows per device.
- SESSIONS (Wait for Complete Batch): session windows per device, one batch per
  session, out once the gap has passed with no new data.
- PER_EVENT (Send as Batch off): every event its own batch, no grouping.

Windows are over arrival time. Each strategy gives Beam's window function for a live
run, the bounded run's grouping with the window in the key (`keyed_groups`), and the
same grouping over batches held in memory (`in_memory`, a sliced run's workers).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Iterator

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from transforms.machinery.merging import Merger, per_event
from transforms.machinery.shuffled import ShuffleCodec, ShuffledBatch
from transforms.machinery.windows import session_end_us, window_end_us
from transforms.rules.grouping import split_sessions, window_start_us
from transforms.values import Batching, BatchingMode, ForwardedBatch

__all__ = ["MODES", "Mode", "mode_of"]

# (outbound batch or dead letter, its time in µs)
Outbound = tuple[ForwardedBatch | pvalue.TaggedOutput, int]


@dataclasses.dataclass(frozen=True)
class Mode:
    """One batching mode.

    `merges`: a device's batches are merged per window (else one batch per event).
    `per_device`: a device's batches must meet before their windows are known
    (sessions); else a batch's arrival gives its window.
    `files_early`: in a live run, files go out within seconds of their batches (which
    end at any time) rather than when their packing window closes."""

    merges: bool = True
    per_device: bool = False
    files_early: bool = False

    def windowfn(self, batching: Batching) -> window.WindowFn:
        """Beam's windows of a live run's batches."""
        raise NotImplementedError

    def keyed_groups(self, keyed, batching: Batching):
        """(device, ShuffledBatch) → (device, [ShuffledBatch]) per window, stamped at
        the window's end, with the window in the key and one GroupByKey in the global
        window (bounded input, where no data is late)."""
        raise NotImplementedError

    def in_memory(self, keyed: list[tuple[str, ShuffledBatch]], batching: Batching,
                  codec: ShuffleCodec, merger: Merger, open_after_ms: int | None
                  ) -> tuple[list[Outbound], list]:
        """The same windows over batches held in memory: (outbound batches or dead
        letters, each with its time in µs; the batches of windows still open at
        `open_after_ms`)."""
        raise NotImplementedError


class FixedWindows(Mode):
    def windowfn(self, batching: Batching) -> window.WindowFn:
        return window.FixedWindows(batching.window_size_s)

    def keyed_groups(self, keyed, batching: Batching):
        size_us = batching.window_size_us
        return (
            keyed
            | "KeyByWindow" >> beam.Map(fixed_window_key, size_us).with_output_types(
                tuple[tuple[str, int], ShuffledBatch])
            | "GroupPerDeviceWindow" >> beam.GroupByKey()
            | "StampWindowEnd" >> beam.Map(_stamped_fixed_window, size_us)
        )

    def in_memory(self, keyed, batching, codec, merger, open_after_ms):
        size_us = batching.window_size_us
        groups: dict[Any, list[ShuffledBatch]] = defaultdict(list)
        for element in keyed:
            key, shuffled = fixed_window_key(element, size_us)
            groups[key].append(shuffled)
        return [(out, window_end_us(start, size_us))
                for (device, start), batches in groups.items()
                for out in merger.merged(device, batches)], []


class Sessions(Mode):
    def windowfn(self, batching: Batching) -> window.WindowFn:
        return window.Sessions(batching.session_gap_s)

    def keyed_groups(self, keyed, batching: Batching):
        return (
            keyed
            | "GroupPerDevice" >> beam.GroupByKey()
            | "SplitSessions" >> beam.FlatMap(_stamped_sessions, batching.session_gap_s * 1000)
        )

    def in_memory(self, keyed, batching, codec, merger, open_after_ms):
        groups: dict[str, list[ShuffledBatch]] = defaultdict(list)
        for device, shuffled in keyed:
            groups[device].append(shuffled)
        outbound: list[Outbound] = []
        carried = []
        for device, batches in groups.items():
            for session, end_ms in split_sessions(batches, batching.session_gap_s * 1000):
                if open_after_ms is not None and end_ms > open_after_ms:
                    carried += [(device, item) for item in session]
                else:
                    outbound += [(out, session_end_us(end_ms))
                                 for out in merger.merged(device, session)]
        return outbound, carried


class PerEvent(Mode):
    def in_memory(self, keyed, batching, codec, merger, open_after_ms):
        return [(forwarded, element[1].arrival_ms * 1000) for element in keyed
                for forwarded in per_event(element, codec)], []


MODES: dict[BatchingMode, Mode] = {
    BatchingMode.FIXED: FixedWindows(),
    BatchingMode.SESSIONS: Sessions(per_device=True, files_early=True),
    BatchingMode.PER_EVENT: PerEvent(merges=False, files_early=True),
}


def mode_of(batching: Batching) -> Mode:
    return MODES[batching.mode]


def fixed_window_key(keyed: tuple[str, ShuffledBatch], size_us: int):
    """((device, window start), batch): the key a batch is grouped under in fixed windows."""
    device, shuffled = keyed
    return (device, window_start_us(shuffled.arrival_ms * 1000, size_us)), shuffled


def _stamped_fixed_window(element, size_us: int):
    (device, start_us), shuffled = element
    return window.TimestampedValue(
        (device, shuffled), Timestamp(micros=window_end_us(start_us, size_us))
    )


def _stamped_sessions(element, gap_ms: int) -> Iterator:
    """A device's sessions, each at its end."""
    device, shuffled = element
    for batches, end_ms in split_sessions(shuffled, gap_ms):
        yield window.TimestampedValue((device, batches), Timestamp(micros=session_end_us(end_ms)))
