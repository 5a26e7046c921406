"""Live sessions kept by the forwarder: a device's batches held in state, per device
or per shard of devices, each session out once its gap has passed (`SessionPerDevice`).

Beam's merging session windows need a runner that merges them on a live source; this
state machine needs only state and event-time timers, and a runner that holds the
watermark at a pending timer. `BatchPerDevice` (`transforms.batching`) uses it when
a run's `LiveSessions.by_timer` says so. The rules are the bounded path's
(`grouping.split_sessions`), and tests prove both write the same objects.
"""

from __future__ import annotations

import threading
import uuid
import zlib
from collections import defaultdict
from typing import Callable, Iterator

import apache_beam as beam
import numpy as np
from apache_beam import coders, pvalue
from apache_beam.transforms import userstate, window
from apache_beam.utils.timestamp import Timestamp

from transforms.io import s3
from transforms.machinery.merging import MergingFn
from transforms.machinery.shuffled import ShuffleCodec, ShuffledBatch, ShuffledBatchCoder
from transforms.machinery.windows import session_end_us
from transforms.outputs import with_dead_letters
from transforms.rules.grouping import split_sessions
from transforms.values import Batching

__all__ = [
    "LATE_HORIZON_MS", "OPENED_AT_MOST", "SEAL_AT", "HoldForSessions", "SessionPerDevice",
    "SessionsMemory", "session_key", "timer_tag",
]

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
    its queue while the watermark, and other devices' timers, pass its time (a runner
    may fire a stage's timers by the watermark of the stage before it, whatever is
    still queued), and such a batch is on time. The written ends are kept for the devices
    written within the horizon (some 16 bytes a device, so an hour of a million
    devices' sessions is some 16 MB): kept in the runner's state instead, each batch
    would read it (a round trip to a runner that sends no cache tokens) and each
    device would keep a timer for the allowed lateness to clear it (a runner that
    visits every key with a pending timer at each watermark refresh would fall behind
    in a long run). So a batch that came after its session was written is missed in a new
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




def timer_tag(device: str, first_ms: int) -> str:
    """A live session's timer's tag: its device and the first arrival known of it."""
    return f"{first_ms} {device}"


def session_key(keyed: tuple[str, ShuffledBatch], shards: int):
    """(the key a device's batch is held under, (device, batch)): the device, or its
    shard (CRC-32 of its id, the same in every process)."""
    device, shuffled = keyed
    key = str(zlib.crc32(device.encode()) % shards) if shards else device
    return key, (device, shuffled)



class _LiveSessionsFn(MergingFn):
    """(key, (device, ShuffledBatch)) in the global window → each of the device's
    sessions, merged, once it has closed (live input, every runner): sessions kept by
    the forwarder rather than by the runner's merging windows, which not every runner
    merges for a live source. The key is the device, or a shard of devices
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
    On a runner that keeps state remotely (one that sends no cache tokens makes every
    read a round trip to it) this is what lets batches through at the source's pace,
    and a firing is a read of the key's bag. When the watermark passes a timer, each
    device's batches are split into sessions (`split_sessions`, the bounded path's
    rule); each that has ended is merged and goes out stamped at its end (its last
    microsecond, as the bounded path stamps it; a runner that fires a bounded run's
    timers all at once, in any order, still stamps each
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
    being late, and a written device keeps no state and no timer: on a runner whose
    watermark visits every key with a pending timer at each refresh, a timer per
    device for the allowed lateness would make a long run fall behind.
    """

    # (device, batch, ON_TIME | LATE) of each batch of the key's open sessions
    BATCHES = userstate.BagStateSpec("batches", coders.TupleCoder(
        [coders.StrUtf8Coder(), ShuffledBatchCoder(), coders.VarIntCoder()]))
    CLOSE = userstate.TimerSpec("close", userstate.TimeDomain.WATERMARK)

    def __init__(self, batching: Batching, codec: ShuffleCodec,
                 input_connection: s3.S3Connection | None,
                 worker_setup: Callable[[], object] | None = None):
        super().__init__(codec, input_connection)
        self._gap_ms = batching.session_gap_s * 1000
        self._memory = SessionsMemory(self._gap_ms)
        self._worker_setup = worker_setup

    def setup(self):
        super().setup()
        if self._worker_setup is not None:
            # For example: a bundle adds batches to the bags of hundreds of keys, and
            # their appends go to the runner together, not one round trip after another.
            self._worker_setup()

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
        # a runner may fire a timer once its watermark reaches the timer's time, and a
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


class HoldForSessions(beam.PTransform):
    """(device, ShuffledBatch) → (key, (device, ShuffledBatch)) in the global window: a
    live run's batches keyed as `SessionPerDevice` holds them (`session_key`), by
    device or, with `shards`, by one of that many shards of the devices."""

    def __init__(self, shards: int = 0):
        super().__init__()
        self._shards = shards

    def expand(self, keyed):
        if not keyed.windowing.is_default():  # a live source's are: no step per batch
            keyed = keyed | "InGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        return keyed | "KeyBySessionShard" >> beam.Map(
            session_key, self._shards).with_output_types(tuple[str, tuple[str, ShuffledBatch]])


class SessionPerDevice(beam.PTransform):
    """(key, (device, ShuffledBatch)) held (`HoldForSessions`) → {"batches":
    ForwardedBatch of each session once it has ended, "dead_letters": dict}.

    `worker_setup`: what each worker runs first (`pipeline.runners.RunnerProfile`)."""

    def __init__(self, batching: Batching, codec: ShuffleCodec,
                 input_connection: s3.S3Connection | None = None,
                 worker_setup: Callable[[], object] | None = None):
        super().__init__()
        self._fn = _LiveSessionsFn(batching, codec, input_connection, worker_setup)

    def expand(self, held):
        return with_dead_letters(held, "SessionPerDevice", self._fn)
