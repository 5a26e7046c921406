"""StampArrival and BatchPerDevice: one outbound batch per device and window.

The modes (fixed windows, sessions, one batch per event) are strategies of their own
(`transforms.machinery.modes`). Windows are over arrival time. A pane that fires after
its window was already written (late data, live runs only) goes out as a further
batch and is counted.

The same windows are reached four ways, all with the same rules
(`transforms.rules.grouping`: window starts, sessions, merging): live fixed windows
through Beam's windows and triggers (for watermarks and late panes); live sessions
through Beam's merging session windows, or, where a run's `LiveSessions` says so,
through a stateful DoFn per device (or shard of devices) with event-time timers
(`transforms.live_sessions`); bounded input, where no data is late, with the window
carried in the key and one GroupByKey in the global window, several times faster; and
in a sliced run's worker, the same keyed windows over batches held in memory
(`Mode.in_memory`). Tests prove they write the same objects. Every way, an outbound
batch's element timestamp is the last microsecond of its window, which is what
packing into files uses.

BatchPerDevice is two steps around the shuffle (`before_shuffle`, `after_shuffle`):
whoever builds a graph with several reads may run the first in each read's place and
split the second by key (`SplitByKey`).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.io import s3
from transforms.live_sessions import HoldForSessions, SessionPerDevice
from transforms.machinery import shuffled
from transforms.machinery.merging import MergingFn, per_event
from transforms.machinery.modes import mode_of
from transforms.machinery.shuffled import NO_DICTIONARY, ShuffleCodec, ShuffledBatch
from transforms.machinery.windows import late_firing_windowing
from transforms.outputs import with_dead_letters
from transforms.values import ArrivedBatch, Batching, LiveSessions

__all__ = ["BY_DEVICE", "BatchPerDevice", "SplitByKey", "StampArrival", "in_global_window",
           "key_part"]

# Live sessions kept by timer, per device.
BY_DEVICE = LiveSessions()


class StampArrival(beam.PTransform):
    """ArrivedBatch → (device, ShuffledBatch) timestamped at its arrival time.

    From here on a batch is compressed JSON (see `transforms.machinery.shuffled`)
    until its device's batches are merged; `codec` must be BatchPerDevice's.
    `stamped=False` keys without the timestamp, for what groups by the arrival a
    ShuffledBatch carries (a sliced run: Beam's timestamps cost a few µs a batch).
    """

    def __init__(self, codec: ShuffleCodec = NO_DICTIONARY, stamped: bool = True):
        super().__init__()
        self._codec = codec
        self._stamped = stamped

    def expand(self, batches):
        shuffled.register_coder()
        keyed = _stamped if self._stamped else _keyed
        return batches | "KeyAndStamp" >> beam.Map(keyed, self._codec).with_output_types(
            tuple[str, ShuffledBatch]
        )


def _keyed(arrived: ArrivedBatch, codec: ShuffleCodec) -> tuple[str, ShuffledBatch]:
    return arrived.device, ShuffledBatch.of(arrived, codec)


def _stamped(arrived: ArrivedBatch, codec: ShuffleCodec) -> window.TimestampedValue:
    return window.TimestampedValue(
        _keyed(arrived, codec), Timestamp(micros=arrived.arrival_ms * 1000))


class _MergeBatchFn(MergingFn):
    """(device, [ShuffledBatch]) → ForwardedBatch; counts duplicates and late panes.

    A group that cannot be merged sends each of its batches to DEAD_LETTERS.
    """

    def process(
        self,
        element: tuple[str, Iterable[ShuffledBatch]],
        pane=beam.DoFn.PaneInfoParam,
    ) -> Iterator:
        device, batches = element
        yield from self._merger.merged(device, list(batches), pane.timing == PaneInfoTiming.LATE)


class _GroupAndMerge(beam.PTransform):
    """(device, ShuffledBatch) windowed → {"batches", "dead_letters"}: grouped per
    device and window (`grouped`: a transform that does it), then merged."""

    def __init__(self, grouped: Callable[[Any], Any], merge_fn: MergingFn):
        super().__init__()
        self._grouped = grouped
        self._merge_fn = merge_fn

    def expand(self, keyed):
        return with_dead_letters(self._grouped(keyed), "MergeBatch", self._merge_fn)


class _OneBatchPerEvent(beam.PTransform):
    """(device, ShuffledBatch) → {"batches": a ForwardedBatch per event, "dead_letters":
    none}."""

    def __init__(self, codec: ShuffleCodec):
        super().__init__()
        self._codec = codec

    def expand(self, keyed):
        return {"batches": keyed | "OneBatchPerEvent" >> beam.FlatMap(per_event, self._codec),
                "dead_letters": keyed.pipeline | "NoDeadLetters" >> beam.Create([])}


class BatchPerDevice(beam.PTransform):
    """(device, ShuffledBatch) → {"batches": ForwardedBatch, "dead_letters": dict}, grouped
    as `batching` says. Dead letters (groups that could not be merged) are in the global
    window.

    `keyed_windows`: bounded input only; the window goes into the key (see above).
    `live_sessions`: how live sessions are kept (`transforms.values.LiveSessions`).
    `codec`: how batches are compressed on their way through the shuffle.
    `input_connection`: how to read the input again for a dead letter's record.
    `worker_setup`: what a worker runs before it keeps live sessions.
    """

    def __init__(
        self,
        batching: Batching,
        keyed_windows: bool = False,
        codec: ShuffleCodec = NO_DICTIONARY,
        input_connection: s3.S3Connection | None = None,
        live_sessions: LiveSessions = BY_DEVICE,
        worker_setup: Callable[[], object] | None = None,
    ):
        super().__init__()
        self._batching = batching
        self._mode = mode_of(batching)
        self._keyed_windows = keyed_windows
        self._live_sessions = live_sessions
        self._codec = codec
        self._input_connection = input_connection
        self._worker_setup = worker_setup

    @property
    def keeps_live_sessions(self) -> bool:
        """Whether live sessions are kept in the forwarder's own state
        (`transforms.live_sessions`)."""
        return (self._mode.per_device and self._live_sessions.by_timer
                and not self._keyed_windows)

    @property
    def merges(self) -> bool:
        """Whether batches are merged per key after the shuffle (so the keys may be
        split between several places: `SplitByKey`); else one batch per event."""
        return self._mode.merges

    def before_shuffle(self) -> beam.PTransform | None:
        """What runs before the shuffle, where the batches were made, or None."""
        if not self._mode.merges or self._keyed_windows:
            return None
        if self.keeps_live_sessions:
            return HoldForSessions(self._live_sessions.shards)
        return _WindowPerDevice(self._batching, self._mode.windowfn(self._batching))

    def after_shuffle(self) -> beam.PTransform:
        """What groups and merges (what `before_shuffle` made) → {"batches",
        "dead_letters"}."""
        if not self._mode.merges:
            return _OneBatchPerEvent(self._codec)
        if self.keeps_live_sessions:
            return SessionPerDevice(self._batching, self._codec, self._input_connection,
                                    self._worker_setup)
        merge_fn = _MergeBatchFn(self._codec, self._input_connection)
        if self._keyed_windows:
            return _GroupAndMerge(
                lambda keyed: self._mode.keyed_groups(keyed, self._batching), merge_fn)
        return _GroupAndMerge(lambda keyed: keyed | "GroupPerDevice" >> beam.GroupByKey(),
                              merge_fn)

    def expand(self, keyed):
        before = self.before_shuffle()
        if before is not None:
            keyed = keyed | "BeforeShuffle" >> before
        batched = keyed | "AfterShuffle" >> self.after_shuffle()
        return {"batches": batched["batches"],
                "dead_letters": in_global_window(batched["dead_letters"])}


def in_global_window(dead_letters):
    """Dead letters into the global window, where they are written."""
    return dead_letters | "DeadLettersInGlobalWindow" >> beam.WindowInto(window.GlobalWindows())


class _WindowPerDevice(beam.PTransform):
    """A live run's batches into Beam's windows of their mode, with late panes."""

    def __init__(self, batching: Batching, windowfn: window.WindowFn):
        super().__init__()
        self._batching = batching
        self._windowfn = windowfn

    def expand(self, keyed):
        return keyed | "WindowPerDevice" >> late_firing_windowing(
            self._windowfn, self._batching.allowed_lateness_s)


def key_part(element: tuple[str, Any], parts: int) -> int:
    """Which of `parts` an element keyed by a string goes to (a shard's number, or a
    device's id): CRC-32 of the key, the same in every process."""
    return zlib.crc32(element[0].encode()) % parts


class SplitByKey(beam.PTransform):
    """(key, ...) → a list of `parts` PCollections, each with its part of the keys
    (`key_part`). Filters, not a Partition: they keep the element type, and so the
    coders."""

    def __init__(self, parts: int):
        super().__init__()
        self._parts = parts

    def expand(self, keyed):
        parts = self._parts
        return [keyed | f"Part{part}" >> beam.Filter(
                    lambda element, part: key_part(element, parts) == part, part)
                for part in range(parts)]
