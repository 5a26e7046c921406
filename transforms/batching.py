"""StampArrival and BatchPerDevice: one outbound batch per device and window.

Modes (SPEC section 4):
- FIXED (Send as Batch, the default): UTC-aligned fixed windows per device.
- SESSIONS (Wait for Complete Batch): session windows per device, one batch
  per session, out once the gap has passed with no new data.
- PER_EVENT (Send as Batch off): every event its own batch, no grouping.

Windows are over arrival time. A pane that fires after its window was already
written (late data, streaming only) goes out as a further batch and is counted.

The same windows are reached four ways, all with the same rules
(`transforms.rules.grouping`: window starts, sessions, merging): live fixed
windows through Beam's windows and triggers (for watermarks and late panes);
live sessions through a stateful DoFn per device (or shard of devices) with
event-time timers (`_LiveSessionsFn`: no runner's merging windows, which Prism does
not merge on a live source); bounded input, where no data is late, with the window carried in
the key and one GroupByKey in the global window, which the FnApiRunner runs
several times faster; and in a sliced run's worker, the same keyed windows over
batches held in memory (`grouped_in_memory`). Tests prove they write the same
objects. Every way, an outbound batch's element timestamp is the last
microsecond of its window, which is what packing into files uses.
"""

from __future__ import annotations

import logging
import threading
import uuid
import zlib
from collections import defaultdict
from typing import Any, Iterable, Iterator, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam import coders, pvalue
from apache_beam.transforms import trigger, userstate, window
from apache_beam.transforms.resources import ResourceHint
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms import metrics, state_commits
from transforms.io import inputs, s3
from transforms.outputs import with_dead_letters
from transforms.rules.dead_letters import AFTER_SETTINGS, DEAD_LETTERS, dead_letter, unexpected
from transforms.rules.grouping import (
    arrival_order,
    merge_batches,
    split_per_event,
    split_sessions,
    window_start_us,
)
from transforms.shuffled import NO_DICTIONARY, ShuffleCodec, ShuffledBatch, ShuffledBatchCoder
from transforms.values import ArrivedBatch, Batching, BatchingMode, ForwardedBatch

_LOG = logging.getLogger(__name__)


def late_firing_windowing(windowfn, allowed_lateness_s: int, early_firing_s: float = 0,
                          late_firing_s: float = 0):
    """WindowInto with one on-time pane, then late panes, discarding: one per late
    element, or one per `late_firing_s` of them.

    `early_firing_s` > 0 also fires that many seconds (processing time) after
    the first element of a pane, for output "within seconds" in streaming.
    `late_firing_s` > 0: a late pane that many seconds (processing time) after its
    first late element, with every late element come by then, rather than one per
    late element (a burst of redelivered batches would make a file each); only for
    a runner that fires a window's pending elements when it closes
    (`pipeline.runners.batches_late_files`).
    Without either this is Beam's default trigger (once at the watermark, then
    once per late element), which Prism also runs on merging windows (sessions); it
    does not run an AfterWatermark with late firings on them
    (https://github.com/apache/beam/issues/31438).
    """
    if early_firing_s or late_firing_s:
        fires = trigger.AfterWatermark(
            early=trigger.AfterProcessingTime(early_firing_s) if early_firing_s else None,
            late=trigger.AfterProcessingTime(late_firing_s) if late_firing_s
            else trigger.AfterCount(1),
        )
    else:
        fires = trigger.DefaultTrigger()
    return beam.WindowInto(
        windowfn,
        trigger=fires,
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
        allowed_lateness=Duration(seconds=allowed_lateness_s),
    )


class StampArrival(beam.PTransform):
    """ArrivedBatch → (device, ShuffledBatch) timestamped at its arrival time.

    From here on a batch is compressed JSON (see `transforms.shuffled`) until
    its device's batches are merged; `codec` must be BatchPerDevice's.
    """

    def __init__(self, codec: ShuffleCodec = NO_DICTIONARY):
        super().__init__()
        self._codec = codec

    def expand(self, batches):
        return batches | "KeyAndStamp" >> beam.Map(_stamped, self._codec).with_output_types(
            tuple[str, ShuffledBatch]
        )


def _stamped(arrived: ArrivedBatch, codec: ShuffleCodec) -> window.TimestampedValue:
    return window.TimestampedValue(
        (arrived.device, ShuffledBatch.of(arrived, codec)),
        Timestamp(micros=arrived.arrival_ms * 1000),
    )


class Merger:
    """One device's batches of one window → ForwardedBatch, counted; the rule of
    _MergeBatchFn, shared with the sliced runs' grouping in workers (`grouped_in_memory`).

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
        if self._input_connection and item.source.startswith("s3://"):
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
            # Also logged: late data is rare, and the DirectRunner under-reports
            # streaming counters (see README, Runners).
            _LOG.info("late data for %s: %d events in a further batch", device, merged.event_count)
        newest = ordered[-1]
        return ForwardedBatch(merged.line, merged.first_event_ms, newest.app_name, device,
                              newest.arrival_ms, merged.event_count)


class _MergingFn(beam.DoFn):
    """A DoFn that merges a device's batches with a `Merger` made in its `setup`."""

    def __init__(self, codec: ShuffleCodec, input_connection: s3.S3Connection | None = None):
        self._codec = codec
        self._input_connection = input_connection

    def setup(self):
        self._merger = Merger(self._codec, self._input_connection)


class _MergeBatchFn(_MergingFn):
    """(device, [ShuffledBatch]) → ForwardedBatch; counts duplicates and late panes.

    A group that cannot be merged sends each of its batches to DEAD_LETTERS.
    """

    def process(
        self,
        element: tuple[str, Iterable[ShuffledBatch]],
        pane=beam.DoFn.PaneInfoParam,
    ) -> Iterator:
        device, shuffled = element
        yield from self._merger.merged(device, list(shuffled), pane.timing == PaneInfoTiming.LATE)


def per_event(keyed: tuple[str, ShuffledBatch], codec: ShuffleCodec) -> Iterator[ForwardedBatch]:
    """With Send as Batch off: a batch's events, each its own outbound batch
    (`grouping.split_per_event`)."""
    device, shuffled = keyed
    for line, first_event_ms, events in split_per_event(shuffled.parts(codec)):
        yield ForwardedBatch(line, first_event_ms, shuffled.app_name, device,
                             shuffled.arrival_ms, events)


def fixed_window_key(keyed: tuple[str, ShuffledBatch], size_us: int):
    """((device, window start), batch): the key a batch is grouped under in fixed windows."""
    device, shuffled = keyed
    return (device, window_start_us(shuffled.arrival_ms * 1000, size_us)), shuffled


def window_end_us(start_us: int, size_us: int) -> int:
    """An outbound batch's time: the last microsecond of its window (as Beam's)."""
    return start_us + size_us - 1


def _stamped_fixed_window(element, size_us: int):
    (device, start_us), shuffled = element
    return window.TimestampedValue(
        (device, shuffled), Timestamp(micros=window_end_us(start_us, size_us))
    )


def session_end_us(end_ms: int) -> int:
    """A session's outbound batch's time: the last microsecond of its window."""
    return end_ms * 1000 - 1


def _stamped_sessions(element, gap_ms: int):
    """A device's sessions, each at its end."""
    device, shuffled = element
    for batches, end_ms in split_sessions(shuffled, gap_ms):
        yield window.TimestampedValue((device, batches), Timestamp(micros=session_end_us(end_ms)))


# Whether a batch held by _LiveSessionsFn came late (`SessionsMemory`).
ON_TIME, LATE = 0, 1

# How far behind the time a live sessions DoFn's timers have fired up to a batch of a
# device it does not remember is called late: no runner holds a batch in its queue for
# an hour of its time while the watermark passes it, and a device's written sessions
# are remembered that long (`SessionsMemory`).
LATE_HORIZON_MS = 3_600_000

# The most devices whose open session a live sessions DoFn's process remembers
# (`_Memory.opened`, some 200 bytes a device): past it, it forgets them all at once.
# Each device's entry goes when the process writes that session, so only the devices
# whose sessions another process wrote (a runner that moves keys) stay behind.
OPENED_AT_MOST = 200_000


class _Memory:
    """A live sessions DoFn's memory in this process.

    Written sessions: the latest time its timers fired at, and the end of each
    device's last written session within the horizon: those written lately by
    device; the others as two arrays, of the devices' hashes (Python's, fixed within
    the process) in order and of their ends, 16 bytes a device, merged and pruned once
    the recent ones are an eighth as many.

    Open sessions: for each device, the first and the latest arrival of batches this
    process knows to be in one session of the device (each less than a gap from
    one before it): the first names that session's timer, the latest sets it
    (`SessionsMemory.arrived`)."""

    def __init__(self, gap_ms: int):
        self.gap_ms = gap_ms
        self.fired_ms = 0
        self.recent: dict[str, int] = {}
        self.sealed = (np.empty(0, np.int64), np.empty(0, np.int64))  # (hashes, ends)
        self.seal_at = SEAL_AT
        self.opened: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def end(self, device: str) -> int:
        """The end of `device`'s last written session remembered, or 0."""
        recent = self.recent.get(device, 0)  # before `sealed`: see `seal`
        hashes, ends = self.sealed
        hashed = hash(device)
        at = int(np.searchsorted(hashes, hashed))
        if at < len(hashes) and hashes[at] == hashed:
            return max(recent, int(ends[at]))
        return recent

    def late(self, device: str, at_ms: int) -> bool:
        """Whether a batch of `device` arriving at `at_ms` came late (`SessionsMemory`)."""
        return at_ms < self.end(device) or at_ms < self.fired_ms - LATE_HORIZON_MS

    def session(self, device: str, at_ms: int) -> tuple[int, int]:
        """(the first, the latest arrival) known of the session of `device` that a
        batch arriving at `at_ms` is in, with it: the device's open session when the
        batch is less than a gap from its latest arrival (so in it, as
        `split_sessions` has it); else a session of its own, which is the device's
        open one from then on unless the batch is older (a late one, or one delivered
        out of order)."""
        known = self.opened.get(device)
        if known is not None and abs(at_ms - known[1]) < self.gap_ms:
            known = (known[0], max(known[1], at_ms))
        elif known is not None and at_ms < known[1]:
            return at_ms, at_ms
        else:
            if known is None and len(self.opened) >= OPENED_AT_MOST:
                self.opened = {}
            known = (at_ms, at_ms)
        self.opened[device] = known
        return known

    def wrote(self, device: str, end_ms: int) -> None:
        self.recent[device] = max(self.recent.get(device, 0), end_ms)
        if len(self.recent) >= max(self.seal_at, len(self.sealed[0]) // 8):
            self.seal()
        opened = self.opened.get(device)
        if opened is not None and opened[1] + self.gap_ms <= end_ms:  # that session, or one before
            del self.opened[device]

    def seal(self) -> None:
        """The recent ends into the arrays; those past the horizon out."""
        hashes, ends = self.sealed
        kept = ends >= self.fired_ms - LATE_HORIZON_MS
        hashes = np.concatenate([hashes[kept], np.fromiter(
            (hash(device) for device in self.recent), np.int64, len(self.recent))])
        ends = np.concatenate([ends[kept], np.fromiter(
            self.recent.values(), np.int64, len(self.recent))])
        order = np.lexsort((ends, hashes))
        hashes, ends = hashes[order], ends[order]
        last = np.append(hashes[1:] != hashes[:-1], True)  # a device's latest end
        # `sealed` before `recent`, so that a reader that finds `recent` emptied finds
        # them sealed
        self.sealed = (hashes[last], ends[last])
        self.recent = {}


# The fewest recent ends that `_Memory` merges into its arrays at once.
SEAL_AT = 4096

# Per DoFn, by the token it was built with.
_MEMORIES: dict[str, _Memory] = {}
_MEMORIES_LOCK = threading.Lock()


class SessionsMemory:
    """What a live sessions DoFn remembers in its process, shared by its instances
    there (`_Memory`): whether a batch came late, and which timer its session has.

    Late: a batch came after the session of its device that it belongs to (or one
    after it) was written, or more than `LATE_HORIZON_MS` behind the time the DoFn's
    timers have fired up to (a time its input watermark has reached; a timer fires
    once the watermark passes it). Judged per device: a runner may hold a batch in
    its queue while the watermark, and other devices' timers, pass its time (Prism
    fires a stage's timers by the watermark of the stage before it, whatever is still
    queued), and such a batch is on time. The written ends are kept for the devices
    written within the horizon (some 16 bytes a device, so an hour of a million
    devices' sessions is some 16 MB): kept in the runner's state instead, each batch
    would read it (a round trip on Prism, which sends no cache tokens) and each device
    would keep a timer for the allowed lateness to clear it (on Prism, which visits
    every key with a pending timer at each watermark refresh, a long run fell
    behind). So a batch that came after its session was written is missed in a new
    process, or in another than the one that wrote the session (a runner that moves
    keys between workers); it then goes out as an on-time one would, uncounted. A
    batch delivered before its session was written is never called late.

    Timers: a batch names its session's timer by the first arrival this process
    knows of that session and sets it at the end of the session so far (its latest
    arrival known, plus the gap; `_Memory.session`), so the batches of a session set
    one timer, each moving it on, and it fires once, when the session has ended.
    What is remembered only saves firings: a session whose batches the process did
    not all see in order (a new process, another worker, an older batch delivered
    after a newer session's) has a timer per part it saw, and a firing that finds
    its session still open sets the timer at its end, as any firing does."""

    def __init__(self, gap_ms: int):
        self._gap_ms = gap_ms
        self._token = uuid.uuid4().hex  # pickled with the DoFn: one per transform

    def _memory(self) -> _Memory:
        memory = _MEMORIES.get(self._token)  # made once per process, not per batch
        if memory is None:
            with _MEMORIES_LOCK:
                memory = _MEMORIES.setdefault(self._token, _Memory(self._gap_ms))
        return memory

    def arrived(self, device: str, at_ms: int) -> tuple[bool, tuple[int, int]]:
        """(whether a batch of `device` arriving at `at_ms` came late, (the first,
        the latest arrival) known of its session, with it: its timer's name and time)."""
        memory = self._memory()
        with memory.lock:
            return memory.late(device, at_ms), memory.session(device, at_ms)

    def fired(self, at_ms: int) -> None:
        memory = self._memory()
        with memory.lock:  # two bundles' firings at once: the later time stays
            memory.fired_ms = max(memory.fired_ms, at_ms)

    def wrote(self, device: str, end_ms: int) -> None:
        """A session of `device` ending at `end_ms` (its last batch plus the gap) was
        written."""
        memory = self._memory()
        with memory.lock:
            memory.wrote(device, end_ms)

    def late(self, device: str, at_ms: int) -> bool:
        return self._memory().late(device, at_ms)


class SdkHarnessHint(ResourceHint):
    """A resource hint that asks for no resource: a transform with another value of
    it is in another environment than the pipeline's default one, and a runner that
    starts an SDK harness per environment (Prism) runs its stages in a harness
    process of their own. Runners that do not know it ignore it (Prism reads no
    resource hint)."""

    urn = "mparticle-s3-forwarder:resources:sdk_harness:v1"


ResourceHint.register_resource_hint("sdk_harness", SdkHarnessHint)


class LiveSessions(NamedTuple):
    """How a live run keeps sessions (`BatchPerDevice`, `pipeline.runners.live_sessions`).

    `by_timer`: in the forwarder's own state with an event-time timer
    (`_LiveSessionsFn`), else Beam's merging session windows.
    `shards`: 0 to key that state by device; else by one of this many shards of the
    device, for a runner that keeps an entry for every key it has ever seen (Prism:
    a state entry, emptied but never dropped, per key of a stateful stage in the
    global window), so that its entries stop growing once every shard has been seen.
    `harnesses`: 0 to keep the sessions in the pipeline's SDK harness; else in this
    many of their own (`SdkHarnessHint`, `in_harness`), beside those that read,
    parse and stamp (`in_reading_harness`) and the one that packs and writes files
    (the first read's), each keeping the sessions of its
    part of the keys (`session_part`): on a runner with one harness process per
    environment (Prism), one environment would leave a live run to one Python
    process, one core at most. Live fixed windows of one read, which the runner groups,
    are then merged in the first of them (`BatchPerDevice.merges_live_windows_apart`);
    of several reads, in the reads' harnesses (`merges_in_reading_harnesses`).
    """

    by_timer: bool = True
    shards: int = 0
    harnesses: int = 0

    def in_harness(self, transform: beam.PTransform, part: int = 0) -> beam.PTransform:
        """`transform`, in the harness of the sessions' `part` of the keys when they
        have harnesses of their own."""
        if not self.harnesses:
            return transform
        name = "live sessions" if self.harnesses == 1 else f"live sessions {part}"
        return transform.with_resource_hints(sdk_harness=name)


BY_DEVICE = LiveSessions()


def in_reading_harness(transform: beam.PTransform, part: int) -> beam.PTransform:
    """`transform`, in the SDK harness of a live run's `part`th read (on Prism, several
    reads each in a harness of its own: `pipeline.runners.reading_harnesses`): the
    first in the pipeline's default one, the others each in one of their own
    (`SdkHarnessHint`)."""
    return transform.with_resource_hints(sdk_harness=f"reading {part}") if part else transform


def numbered(label: str, part: int, parts: int) -> str:
    """A step's label, numbered by its part where there are several."""
    return f"{label}{part}" if parts > 1 else label


def timer_tag(device: str, first_ms: int) -> str:
    """A live session's timer's tag: its device and the first arrival known of it."""
    return f"{first_ms} {device}"


def session_key(keyed: tuple[str, ShuffledBatch], shards: int):
    """(the key a device's batch is held under, (device, batch)): the device, or its
    shard (CRC-32 of its id, the same in every process)."""
    device, shuffled = keyed
    key = str(zlib.crc32(device.encode()) % shards) if shards else device
    return key, (device, shuffled)


def session_part(held: tuple[str, Any], parts: int) -> int:
    """Which of `parts` SDK harnesses keeps the sessions held under this key (a shard's
    number, or a device's id): CRC-32 of the key, the same in every process."""
    return zlib.crc32(held[0].encode()) % parts


class _LiveSessionsFn(_MergingFn):
    """(key, (device, ShuffledBatch)) in the global window → each of the device's
    sessions, merged, once it has closed (live input, every runner): sessions kept by
    the forwarder rather than by the runner's merging windows, which Prism does not
    merge for a live source. The key is the device, or a shard of devices
    (`LiveSessions.shards`, `session_key`).

    State per key: the batches of its devices' open sessions, each with its device
    and whether it came late, and a timer at each open session's end; nothing once
    all are written. A batch reads no state: it is added to the bag and sets its
    session's timer, tagged with its device and the first arrival known of the
    session (`timer_tag`), at the end of the session so far: its latest arrival
    known, plus the gap. What is known of a device's open session is the process's
    memory (`SessionsMemory`): batches each less than a gap from one before it, so in
    one session. So the batches of a session move one timer, which fires once, when
    the session has ended; a later session's batches have a timer of their own and
    leave an earlier session's as it is; another device's batch has a tag of its own.
    On a runner that keeps state remotely (Prism sends no cache tokens, so every read
    is a round trip to it) this is what lets batches through at the source's pace,
    and a firing is a read of the key's bag. When the watermark passes a timer, each
    device's batches are split into sessions (`split_sessions`, the bounded path's
    rule); each that has ended is merged and goes out stamped at its end (its last
    microsecond, as the bounded path stamps it; a runner that fires a bounded run's
    timers all at once, as the FnApiRunner does, in any order, still stamps each
    session at its own end); each still open gets a timer at its end, tagged with its
    first arrival (a timer that fired before its session's end: a batch of it not
    known to this process, or delivered out of order). A session's timer is at the
    millisecond after it (`_close_at`), which holds the watermark downstream until the
    session is out, but for that millisecond: a file window that ends exactly where a
    session does may close first, and the session's batch then goes into a further
    file of that window, as late data does. A timer that finds nothing ended changes
    no state.

    Late data: a batch that arrives after its device's session that it belongs to
    was written came late (`SessionsMemory`); a session made only of such
    batches goes out as a further batch, counted late (a late batch that joins a
    session of on-time ones is merged into it, as Beam merges a late element into an
    open session window). Data are in the global window, so none is ever dropped for
    being late, and a written device keeps no state and no timer: on Prism, whose
    watermark visits every key with a pending timer at each refresh, a timer per
    device for the allowed lateness made a long run fall behind.
    """

    # (device, batch, ON_TIME | LATE) of each batch of the key's open sessions
    BATCHES = userstate.BagStateSpec("batches", coders.TupleCoder(
        [coders.StrUtf8Coder(), ShuffledBatchCoder(), coders.VarIntCoder()]))
    CLOSE = userstate.TimerSpec("close", userstate.TimeDomain.WATERMARK)

    def __init__(self, batching: Batching, codec: ShuffleCodec,
                 input_connection: s3.S3Connection | None):
        super().__init__(codec, input_connection)
        self._gap_ms = batching.session_gap_s * 1000
        self._memory = SessionsMemory(self._gap_ms)

    def setup(self):
        super().setup()
        # A bundle adds batches to the bags of hundreds of keys: their appends go to
        # the runner together, not one round trip after another.
        state_commits.pipeline_bag_commits()

    def process(
        self,
        element: tuple[str, tuple[str, ShuffledBatch]],
        batches=beam.DoFn.StateParam(BATCHES),
        close=beam.DoFn.TimerParam(CLOSE),
    ) -> Iterator:
        _, (device, shuffled) = element
        late, (first_ms, last_ms) = self._memory.arrived(device, shuffled.arrival_ms)
        batches.add((device, shuffled, LATE if late else ON_TIME))
        self._close_at(close, device, first_ms, last_ms + self._gap_ms)
        return iter(())

    def _close_at(self, close, device: str, first_ms: int, end_ms: int) -> None:
        # At the session's end, the first millisecond after it, not at its last one:
        # Prism fires a timer once its watermark reaches the timer's time, and a
        # watermark at a time says nothing of batches at that very millisecond, which
        # may still be on their way (a batch a gap less 1 ms after the last one).
        close.set(Timestamp(micros=end_ms * 1000),
                  dynamic_timer_tag=timer_tag(device, first_ms))

    @userstate.on_timer(CLOSE)
    def close_sessions(
        self,
        timestamp=beam.DoFn.TimestampParam,
        batches=beam.DoFn.StateParam(BATCHES),
        close=beam.DoFn.TimerParam(CLOSE),
    ) -> Iterator:
        # Runners keep a timer's time in milliseconds: a session has ended once its
        # end is reached.
        now_ms = timestamp.micros // 1000
        self._memory.fired(now_ms)
        held = list(batches.read())
        if not held:
            return
        late = {id(item) for _, item, came in held if came == LATE}
        per_device: dict[str, list[ShuffledBatch]] = defaultdict(list)
        for device, item, _ in held:
            per_device[device].append(item)
        ended, still_open = [], []
        for device, items in per_device.items():
            for session, end_ms in split_sessions(items, self._gap_ms):
                (ended if end_ms <= now_ms else still_open).append((device, session, end_ms))
        for device, session, end_ms in still_open:  # a timer set out of order may have fired early
            self._close_at(close, device, session[0].arrival_ms, end_ms)
        if not ended:
            return
        batches.clear()
        for device, session, _ in still_open:
            for item in session:
                batches.add((device, item, LATE if id(item) in late else ON_TIME))
        for device, session, end_ms in ended:
            self._memory.wrote(device, end_ms)
            is_late = all(id(item) in late for item in session)
            at = Timestamp(micros=session_end_us(end_ms))
            for out in self._merger.merged(device, session, is_late):
                yield out if isinstance(out, pvalue.TaggedOutput) else window.TimestampedValue(
                    out, at)


class BatchPerDevice(beam.PTransform):
    """(device, ShuffledBatch) → {"batches": ForwardedBatch, "dead_letters": dict}, grouped
    as `batching` says. Dead letters (groups that could not be merged) are in the global
    window.

    `keyed_windows`: bounded input only; the window goes into the key (see above).
    `live_sessions`: how live sessions are kept (`LiveSessions`): by `_LiveSessionsFn`
    on a runner that holds the watermark at a pending timer (`pipeline.runners`); else
    by Beam's merging session windows (the DirectRunner, which holds no watermark for
    a user's timer, so a session sent from one would be late downstream).
    `codec`: how batches are compressed on their way through the shuffle.
    `input_connection`: how to read the input again for a dead letter's record.

    The input: a PCollection, or a tuple of them, one per read of a live run in an
    SDK harness of its own (`in_reading_harness`); each one's steps before the first
    shuffle (the windowing, the keying by shard and its split between the sessions'
    harnesses) then run in its harness, fused into its read, and what they make is
    flattened into the shuffle, so that no read's batches pass through another's
    harness on their way to it. (One batch per event: the reads are flattened first,
    and their files keyed in the default harness.) `reads`: how many (a tuple's length).

    Live fixed windows of several reads are merged in the reads' harnesses, each
    with its part of the devices (`session_part`), split in each read's harness
    before the runner groups them: the windows of a backlog close together once it is
    read, and their merging is then shared by as many processes as read it.
    """

    def __init__(
        self,
        batching: Batching,
        keyed_windows: bool = False,
        codec: ShuffleCodec = NO_DICTIONARY,
        input_connection: s3.S3Connection | None = None,
        live_sessions: LiveSessions = BY_DEVICE,
        reads: int = 1,
    ):
        super().__init__()
        self._live_sessions = live_sessions
        self._reads = reads
        self._batching = batching
        self._mode = batching.mode
        self._keyed_windows = keyed_windows
        self._codec = codec
        self._input_connection = input_connection

    @property
    def keeps_live_sessions(self) -> bool:
        """Whether sessions are kept by `_LiveSessionsFn` (in the sessions' own SDK
        harness if `live_sessions` says so)."""
        return (self._mode is BatchingMode.SESSIONS and self._live_sessions.by_timer
                and not self._keyed_windows)

    @property
    def merges_live_windows_apart(self) -> bool:
        """Whether live fixed windows are merged in an SDK harness of their own
        (`LiveSessions.harnesses`), as live sessions are kept: the runner groups them,
        and the harness that reads, parses and writes files does not also merge."""
        return (self._mode is BatchingMode.FIXED and self._live_sessions.harnesses > 0
                and not self._keyed_windows and self._reads == 1)

    @property
    def merges_in_reading_harnesses(self) -> bool:
        """Whether live fixed windows of several reads are merged in the reads' SDK
        harnesses, each its part of the devices (see above)."""
        return (self._mode is BatchingMode.FIXED and self._reads > 1
                and not self._keyed_windows)

    def placed(self, transform: beam.PTransform, part: int = 0) -> beam.PTransform:
        """`transform`, placed where the stage that makes the batches runs: for a step
        that a runner fuses into it (the keying of their files); `part`: which of the
        "batches" PCollections it takes, when they are a tuple (fixed windows merged in
        the reads' harnesses: each in its own). Sessions kept in several harnesses are
        flattened, and the step goes where the pipeline's others are; fixed windows of
        one read are merged in the first."""
        if self.merges_in_reading_harnesses:
            return in_reading_harness(transform, part)
        if self.merges_live_windows_apart or (
                self.keeps_live_sessions and self._live_sessions.harnesses == 1):
            return self._live_sessions.in_harness(transform)
        return transform

    def expand(self, keyed):
        reads = keyed if isinstance(keyed, tuple) else (keyed,)
        if len(reads) != self._reads:
            raise ValueError(f"BatchPerDevice of {self._reads} reads given {len(reads)}")
        if self._mode is BatchingMode.PER_EVENT:
            keyed = self._flattened(list(reads), "AllArrived")
            batches = keyed | "OneBatchPerEvent" >> beam.FlatMap(per_event, self._codec)
            nothing = keyed.pipeline | "NoDeadLetters" >> beam.Create([])
            return {"batches": batches, "dead_letters": nothing}
        if self.keeps_live_sessions:
            return self._kept_live([self._held(read, part, len(reads))
                                    for part, read in enumerate(reads)])
        if self._keyed_windows:
            grouped = [self._group_keyed(self._flattened(list(reads), "AllArrived"))]
        else:
            grouped = self._group_windowed(reads)
        merged = [with_dead_letters(
            part, numbered("MergeBatch", read, len(grouped)), _MergeBatchFn(
                self._codec, self._input_connection),
            placed=lambda transform, read=read: self.placed(transform, read))
            for read, part in enumerate(grouped)]
        dead_letters = self._flattened([each["dead_letters"] for each in merged],
                                       "AllMergeDeadLetters")
        batches = tuple(each["batches"] for each in merged)
        return {"batches": batches if len(batches) > 1 else batches[0],
                "dead_letters": dead_letters | "DeadLettersInGlobalWindow" >> beam.WindowInto(
                    window.GlobalWindows())}

    @staticmethod
    def _flattened(pcolls: list, label: str):
        return pcolls[0] if len(pcolls) == 1 else pcolls | label >> beam.Flatten()

    def _held(self, keyed, read: int, reads: int):
        """A read's batches keyed as the live sessions hold them (`session_key`), in
        the read's harness."""
        if not keyed.windowing.is_default():  # a live source's are: no step per batch
            keyed = keyed | numbered("InGlobalWindow", read, reads) >> in_reading_harness(
                beam.WindowInto(window.GlobalWindows()), read)
        return keyed | numbered("KeyBySessionShard", read, reads) >> in_reading_harness(
            beam.Map(session_key, self._live_sessions.shards).with_output_types(
                tuple[str, tuple[str, ShuffledBatch]]), read)

    def _kept_live(self, held: list) -> dict:
        """Sessions kept by `_LiveSessionsFn` (what each read holds: `_held`), in one
        step, or in one step per SDK harness of their own (`LiveSessions.harnesses`),
        each with its part of the keys, split in each read's harness."""
        def kept(part_of_held, label: str, part: int = 0) -> dict:
            return with_dead_letters(part_of_held, label, _LiveSessionsFn(
                self._batching, self._codec, self._input_connection),
                placed=lambda transform: self._live_sessions.in_harness(transform, part))

        parts = self._live_sessions.harnesses
        if parts <= 1:
            return kept(self._flattened(held, "AllHeld"), "SessionPerDevice")
        merged = [kept(each, f"SessionPerDevice{part}", part) for part, each in enumerate(
            self._split(held, parts, "SessionsOfHarness", "AllHeldOfHarness"))]
        return {
            "batches": [each["batches"] for each in merged] | "AllSessions" >> beam.Flatten(),
            "dead_letters": [each["dead_letters"] for each in merged]
            | "AllSessionsDeadLetters" >> beam.Flatten(),
        }

    def _group_windowed(self, reads: tuple) -> list:
        """Each read's batches windowed in its harness, then grouped: all together (one
        read, or sessions: Beam's merging windows), or each read's harness's part of
        the devices (fixed windows of several reads; see above)."""
        if self._mode is BatchingMode.SESSIONS:
            windowfn = window.Sessions(self._batching.session_gap_s)
        else:
            windowfn = window.FixedWindows(self._batching.window_size_s)
        lateness_s = self._batching.allowed_lateness_s
        windowed = [keyed | numbered("WindowPerDevice", read, len(reads)) >> in_reading_harness(
                        late_firing_windowing(windowfn, lateness_s), read)
                    for read, keyed in enumerate(reads)]
        parts = len(reads) if self._mode is BatchingMode.FIXED else 1
        if parts == 1:
            return [self._flattened(windowed, "AllWindowed") | "GroupPerDevice" >> (
                beam.GroupByKey())]
        return [each | f"GroupPerDevice{part}" >> beam.GroupByKey() for part, each in enumerate(
            self._split(windowed, parts, "DevicesOfHarness", "AllWindowed"))]

    def _split(self, reads: list, parts: int, label: str, flattened: str) -> list:
        """Each read's (key, ...) elements split into `parts` by their key
        (`session_part`) in the read's harness, then each part of every read flattened.
        Filters, not a Partition: they keep the element type, and so the coders."""
        return [self._flattened([
                    each | (f"{label}{part}" if len(reads) == 1 else
                            f"{label}{part}FromRead{read}") >> in_reading_harness(
                        beam.Filter(lambda kv, part: session_part(kv, parts) == part, part), read)
                    for read, each in enumerate(reads)], f"{flattened}{part}")
                for part in range(parts)]

    def _group_keyed(self, keyed):
        if self._mode is BatchingMode.SESSIONS:
            return (
                keyed
                | "GroupPerDevice" >> beam.GroupByKey()
                | "SplitSessions" >> beam.FlatMap(
                    _stamped_sessions, self._batching.session_gap_s * 1000)
            )
        size_us = self._batching.window_size_us
        return (
            keyed
            | "KeyByWindow" >> beam.Map(fixed_window_key, size_us).with_output_types(
                tuple[tuple[str, int], ShuffledBatch]
            )
            | "GroupPerDeviceWindow" >> beam.GroupByKey()
            | "StampWindowEnd" >> beam.Map(_stamped_fixed_window, size_us)
        )


def grouped_in_memory(
    keyed: list[tuple[str, ShuffledBatch]], batching: Batching, codec: ShuffleCodec,
    merger: Merger, open_after_ms: int | None = None,
) -> tuple[list[tuple[ForwardedBatch | pvalue.TaggedOutput, int]], list]:
    """BatchPerDevice's keyed windows over batches held in memory (a sliced run's
    worker, `transforms.spill`): (outbound batches or dead letters, each with its
    time in µs; the batches of sessions still open at `open_after_ms`)."""
    if batching.mode is BatchingMode.PER_EVENT:
        return [(forwarded, element[1].arrival_ms * 1000) for element in keyed
                for forwarded in per_event(element, codec)], []
    groups: dict[Any, list[ShuffledBatch]] = defaultdict(list)
    if batching.mode is BatchingMode.FIXED:
        size_us = batching.window_size_us
        for element in keyed:
            key, shuffled = fixed_window_key(element, size_us)
            groups[key].append(shuffled)
        return [(out, window_end_us(start, size_us))
                for (device, start), batches in groups.items()
                for out in merger.merged(device, batches)], []
    for device, shuffled in keyed:
        groups[device].append(shuffled)
    outbound: list[tuple[ForwardedBatch | pvalue.TaggedOutput, int]] = []
    carried = []
    for device, batches in groups.items():
        for session, end_ms in split_sessions(batches, batching.session_gap_s * 1000):
            if open_after_ms is not None and end_ms > open_after_ms:
                carried += [(device, item) for item in session]
            else:
                outbound += [(out, session_end_us(end_ms))
                             for out in merger.merged(device, session)]
    return outbound, carried
