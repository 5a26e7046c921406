"""PubSubSource: a Pub/Sub subscription as a portable unbounded source.

Read with `beam.io.Read(PubSubSource(subscription))`, which every portable runner
executes as a splittable DoFn, unlike Beam's `ReadFromPubSub`, which only some
runners run natively.

- One thread per process and subscription pulls into a bounded queue that every
  reader of that subscription in the process drains, so `advance()` never waits
  on the network, and no reader holds messages only it can emit: Beam parks a
  reader between bundles in a cache of the DoFn instance that ran it, and when
  the runner resumes the split on another instance a new reader is made while
  the parked one lives on until the cache evicts it (seen under load).
- Every message pulled has its ack deadline extended until the checkpoint that
  covers it is finalized; what is queued while no reader asks for
  `UNDRAINED_S` is handed back to Pub/Sub, for another process to take.
- A message is acknowledged only when the checkpoint that covers it is
  finalized: a runner finalizes a bundle only after it has committed its output
  (when a checkpoint completes, or after a durable commit). So a
  crash before that leaves the message unacknowledged, and Pub/Sub delivers it
  again.
- The watermark is the oldest publish time among the messages the process has
  pulled and not yet acknowledged: queued, being emitted, or emitted in a bundle
  whose checkpoint is not yet finalized (so no reader reports a time past a
  message another reader holds, and a runner that tracks one watermark for
  several readers fires no window before their messages are committed); when
  none are held it is the start of the last pull that found nothing (less a
  second), so windows of quiet devices close, and a message published during a
  slow pull is not behind it.
- `sample_messages`: what a live run's launcher trains the shuffle's compression
  dictionary on, messages waiting in the subscription, handed back at once.
- `split(n)` gives n readers of the same subscription: in one process they share
  the queue; in several, Pub/Sub shares the messages out between them.
- A drain (the launcher creates the file a source is given as `drain_file`): the puller
  pulls no more; once what it queued has been emitted, every reader reports the
  end of time (MAX_TIMESTAMP), so the runner fires every open window, writes its
  files and ends the job. Else a stopped run would lose what a runner that
  finalizes on holding a bundle's output has acknowledged and holds in open
  windows.
"""

from __future__ import annotations

import collections
import functools
import heapq
import logging
import os
import threading
import time
import warnings
from typing import Any

from apache_beam import coders
from apache_beam.io.unbounded_source import CheckpointMark, UnboundedReader, UnboundedSource
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from transforms import metrics
from transforms.io import retries
from transforms.io.pubsub_resources import retrying
from transforms.values import RawRecord

_LOG = logging.getLogger(__name__)
MAX_MESSAGES_PER_PULL = 1000
QUEUE_MESSAGES = 20_000  # pulled and not yet emitted, per process and subscription
# A held message's lease: what a crash leaves unacknowledged comes again this soon.
ACK_DEADLINE_S = 30
EXTEND_EVERY_S = 10
ACK_CHUNK = 1000  # ids per Acknowledge / ModifyAckDeadline request
# How long one call is retried on transient errors (the client's default is 60 s,
# which would hold the puller, and the leases it extends, through an outage).
ACK_TIMEOUT_S = 10.0  # then an Acknowledge is left to the puller to send again
LEASE_CALL_TIMEOUT_S = 5.0
IDLE_WATERMARK_LAG_S = 1.0  # how far behind an empty pull's start the idle watermark is
PULL_TIMEOUT_S = 5.0
# How long a reader's start waits for its process's first pull: a reader that finds
# nothing is asked again only a poll later (`ReadFromUnboundedSource`'s `poll_interval`,
# a second), so a run would start a second late on a waiting backlog.
FIRST_PULL_WAIT_S = 2.0
WATERMARK_EVERY_S = 0.05
# Queued messages no reader asked for in this long go back to Pub/Sub, and
# pulling pauses until a reader asks again.
UNDRAINED_S = 15.0
ACK_RETRY_EVERY_S = 1.0
MAX_HOLD_S = 30 * 60  # past this a message is left to be redelivered
# A pull that keeps failing is said once in this long (the launcher's status line and
# /readyz say it all along).
FAILURE_LOG_EVERY_S = 60


def draining(drain_file: str | None) -> bool:
    """Whether the launcher has asked the readers to drain: it has created
    `drain_file` (None: a source that is stopped otherwise)."""
    return bool(drain_file) and os.path.exists(drain_file)


def _subscriber():
    """One client per process (and Pub/Sub endpoint): its channel is thread-safe."""
    return _client_for(os.environ.get("PUBSUB_EMULATOR_HOST"))


@functools.cache
def _client_for(emulator_host: str | None):
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient()


def _in_chunks(ids: list[str]):
    for start in range(0, len(ids), ACK_CHUNK):
        yield ids[start:start + ACK_CHUNK]


def _request(kind: str, **fields):
    """A request of the client's `kind`, made as the protobuf under its wrapper: the
    client's conversion of a dict, field by field, took as long per ack id as the call."""
    from google.pubsub_v1 import types

    wrapper = getattr(types, kind)
    return wrapper.wrap(wrapper.pb()(**fields))


def _modify_deadline(subscription: str, ack_ids: list[str], seconds: int, doing: str) -> None:
    """Sets the ack deadline of `ack_ids` (0: hands them back); a failure is logged, as it
    only means a redelivery, or a message coming again after its deadline."""
    client = _subscriber()
    for chunk in _in_chunks(ack_ids):
        try:
            client.modify_ack_deadline(
                request=_request("ModifyAckDeadlineRequest", subscription=subscription,
                                 ack_ids=chunk, ack_deadline_seconds=seconds),
                retry=retrying(LEASE_CALL_TIMEOUT_S), timeout=LEASE_CALL_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - a lease lost means a redelivery, no more
            _LOG.warning("%s %d messages of %s failed: %s", doing, len(chunk), subscription, err)


class _Leases:
    """The messages this process holds, pulled and not yet acknowledged: their leases
    are extended until the checkpoint covering them is finalized, an Acknowledge
    that failed is sent again, and the oldest publish time among them holds the
    source's watermark. A checkpoint is finalized in the process that read it,
    by whatever object the SDK keeps then (the reader and its puller may be gone), so
    the process has one of these (`LEASES`), shared by its pullers and checkpoints.
    """

    def __init__(self):
        self._lock = threading.Lock()
        # ack id → (subscription, when it was pulled, its publish time in µs)
        self._held: dict[str, tuple[str, float, int]] = {}
        # subscription → a heap of (publish time µs, ack id) of what was held; entries
        # no longer held are dropped when they reach the top.
        self._by_publish: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
        # subscription → (when pulled, ack id) in the order pulled, likewise: the oldest
        # held is at the left once those no longer held are dropped from there.
        self._by_pull: dict[str, collections.deque[tuple[float, str]]] = (
            collections.defaultdict(collections.deque))
        self._unacked: dict[str, set[str]] = collections.defaultdict(set)
        self._acknowledged = 0  # since a reader last counted them (`take_acknowledged`)

    def hold(self, subscription: str, messages: list[tuple[str, int]]) -> None:
        """(ack id, publish time µs) of messages just pulled."""
        now = time.monotonic()
        with self._lock:
            heap = self._by_publish[subscription]
            pulled = self._by_pull[subscription]
            for ack_id, publish_us in messages:
                self._held[ack_id] = (subscription, now, publish_us)
                heapq.heappush(heap, (publish_us, ack_id))
                pulled.append((now, ack_id))

    def oldest_publish_us(self, subscription: str) -> int | None:
        """The oldest publish time among `subscription`'s messages held here; None
        when none is held."""
        with self._lock:
            heap = self._by_publish[subscription]
            while heap and heap[0][1] not in self._held:
                heapq.heappop(heap)
            if len(heap) > 2 * len(self._held) + 10_000:  # an old one held, the rest gone
                heap[:] = [(publish_us, ack_id) for ack_id, (held_by, _, publish_us)
                           in self._held.items() if held_by == subscription]
                heapq.heapify(heap)
            return heap[0][0] if heap else None

    def release(self, ack_ids: list[str]) -> None:
        with self._lock:
            for ack_id in ack_ids:
                self._held.pop(ack_id, None)

    def held(self, subscription: str) -> list[str]:
        """What `subscription`'s leases cover now; those held past MAX_HOLD_S are let go
        (Pub/Sub delivers them again)."""
        now = time.monotonic()
        with self._lock:
            for ack_id in [a for a, (_, at, _) in self._held.items() if now - at > MAX_HOLD_S]:
                del self._held[ack_id]
            return [a for a, (held_by, _, _) in self._held.items() if held_by == subscription]

    def oldest_held_s(self, subscription: str) -> float | None:
        """How long the oldest message of `subscription` held here has been held;
        None when none is. Asked at every element the source emits (its watermark):
        amortized constant time, whatever the number held."""
        with self._lock:
            pulled = self._by_pull[subscription]
            while pulled and pulled[0][1] not in self._held:
                pulled.popleft()
            if len(pulled) > 2 * len(self._held) + 10_000:  # an old one held, the rest gone
                self._by_pull[subscription] = pulled = collections.deque(sorted(
                    (at, ack_id) for ack_id, (held_by, at, _) in self._held.items()
                    if held_by == subscription))
            return time.monotonic() - pulled[0][0] if pulled else None

    def ack_failed(self, subscription: str, ack_ids: list[str]) -> None:
        """Acknowledges that failed: still held, to be sent again (`take_unacked`)."""
        with self._lock:
            self._unacked[subscription].update(ack_ids)

    def acknowledged(self, count: int) -> None:
        """`count` messages were acknowledged (in a finalization, where Beam's counters
        cannot be reached: a reader counts them at its next watermark)."""
        with self._lock:
            self._acknowledged += count

    def take_acknowledged(self) -> int:
        with self._lock:
            count, self._acknowledged = self._acknowledged, 0
            return count

    def take_unacked(self, subscription: str) -> list[str]:
        with self._lock:
            return list(self._unacked.pop(subscription, ()))


LEASES = _Leases()


def oldest_held_s(subscription: str) -> float | None:
    """How long the oldest message of `subscription` this process holds, pulled and
    not yet acknowledged, has been held; None when it holds none."""
    return LEASES.oldest_held_s(subscription)


class PubSubCheckpoint(CheckpointMark):
    """The messages one bundle emitted; finalizing it acknowledges them."""

    def __init__(self, subscription: str, ack_ids: list[str]):
        self.subscription = subscription
        self.ack_ids = ack_ids

    def finalize_checkpoint(self) -> None:
        if self.ack_ids:
            _acknowledge(self.subscription, self.ack_ids)


def _acknowledge(subscription: str, ack_ids: list[str]) -> None:
    """Acknowledges; what fails is left for the puller to send again (never raises:
    a finalization that failed would not be tried again)."""
    from google.api_core import exceptions

    client = _subscriber()
    sent = 0
    try:
        for chunk in _in_chunks(ack_ids):
            client.acknowledge(request=_request("AcknowledgeRequest",
                                                subscription=subscription, ack_ids=chunk),
                               retry=retrying(ACK_TIMEOUT_S), timeout=ACK_TIMEOUT_S)
            sent += len(chunk)
    except exceptions.GoogleAPIError as err:
        _LOG.warning("acknowledging %d messages of %s failed, sending them again: %s",
                     len(ack_ids) - sent, subscription, err)
        LEASES.ack_failed(subscription, ack_ids[sent:])
    LEASES.release(ack_ids[:sent])
    LEASES.acknowledged(sent)


def sample_messages(subscription: str, count: int = MAX_MESSAGES_PER_PULL) -> list[bytes]:
    """The data of up to `count` messages waiting in `subscription`, handed back at
    once (ack deadline 0), so that the run reads them as if they had not been pulled.

    For the shuffle's compression dictionary (`ShuffleCodec.trained_on`), before a live
    run starts: an empty subscription gives none at once (nothing waits for messages),
    and so does a failure (the run itself reports an unreachable server). A hand-back
    that fails delays its messages by the subscription's ack deadline; none is lost.
    """
    from google.api_core import exceptions

    client = _subscriber()
    try:
        with warnings.catch_warnings():  # return_immediately is deprecated for polling
            warnings.simplefilter("ignore", DeprecationWarning)  # (one pull at start is not)
            response = client.pull(
                request={"subscription": subscription, "max_messages": count,
                         "return_immediately": True},
                retry=retrying(PULL_TIMEOUT_S), timeout=PULL_TIMEOUT_S)
    except exceptions.GoogleAPIError as err:
        _LOG.info("%s: no messages sampled for the shuffle's dictionary: %s",
                  subscription, err)
        return []
    received = type(response).pb(response).received_messages
    _modify_deadline(subscription, [each.ack_id for each in received], 0, "handing back sampled")
    return [each.message.data for each in received]


class _Puller:
    """A subscription's messages, pulled in a background thread into one queue
    that every reader of the subscription in this process drains.

    Readers `join` and `leave`; the last to leave stops the thread and hands the
    queue back to Pub/Sub.
    """

    _running: dict[str, _Puller] = {}
    _lock = threading.Lock()

    @classmethod
    def join(cls, subscription: str, drain_file: str | None = None) -> _Puller:
        with cls._lock:
            puller = cls._running.get(subscription)
            if puller is None:
                puller = cls._running[subscription] = _Puller(subscription, drain_file)
                puller._thread.start()
            puller._readers += 1
            return puller

    def leave(self) -> None:
        with _Puller._lock:
            self._readers -= 1
            if self._readers:
                return
            del _Puller._running[self._subscription]
        self._stop.set()
        self._thread.join(timeout=PULL_TIMEOUT_S + 1)
        self._hand_back()

    def __init__(self, subscription: str, drain_file: str | None = None):
        self._subscription = subscription
        self._drain_file = drain_file
        self._client = _subscriber()
        self._queue: collections.deque = collections.deque()
        self._readers = 0
        self._asked = time.monotonic()  # when a reader last asked for a message
        # Wall-clock start of the latest pull that found nothing, while no pull
        # has found anything since; None while messages are coming.
        self._empty_since: float | None = None
        self._stop = threading.Event()
        self._failure_logged = -FAILURE_LOG_EVERY_S  # monotonic time a failed pull was said
        self.first_pull = threading.Event()  # set once the thread's first turn is over
        self._thread = threading.Thread(target=self._pull_forever, daemon=True,
                                        name="pubsub-pull")

    def take(self) -> tuple[RawRecord, Timestamp, str] | None:
        self._asked = time.monotonic()
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def drained(self) -> bool:
        """A drain was asked for and every message pulled has been taken."""
        return not self._queue and draining(self._drain_file)

    def watermark(self) -> Timestamp | None:
        """The oldest publish time pulled and not yet acknowledged; when there is none,
        the start of the last empty pull less IDLE_WATERMARK_LAG_S; None when
        neither says anything new."""
        oldest_us = LEASES.oldest_publish_us(self._subscription)
        if oldest_us is not None:
            return Timestamp(micros=oldest_us)
        empty_since = self._empty_since
        if empty_since is None:
            return None
        return Timestamp.of(empty_since - IDLE_WATERMARK_LAG_S)

    def _pull_forever(self) -> None:
        last_extended = last_acked = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_acked > ACK_RETRY_EVERY_S:
                last_acked = time.monotonic()
                self._acknowledge_again()
            if draining(self._drain_file):
                time.sleep(0.1)  # pull no more; the readers empty the queue
            elif time.monotonic() - self._asked > UNDRAINED_S:
                self._hand_back()  # no reader here drains it: let another take it
                time.sleep(0.05)
            elif len(self._queue) < QUEUE_MESSAGES:
                self._pull_once()
            else:
                time.sleep(0.05)
            self.first_pull.set()
            if time.monotonic() - last_extended > EXTEND_EVERY_S:
                last_extended = time.monotonic()
                self._extend_leases()

    def _pull_once(self) -> None:
        from google.api_core import exceptions

        started = time.time()
        try:
            response = self._client.pull(
                request={"subscription": self._subscription,
                         "max_messages": MAX_MESSAGES_PER_PULL},
                retry=retrying(PULL_TIMEOUT_S), timeout=PULL_TIMEOUT_S,
            )
        except exceptions.GoogleAPIError as err:
            cause = err.cause if isinstance(err, exceptions.RetryError) else err
            if isinstance(cause, exceptions.DeadlineExceeded):  # waited, nothing came
                self._found_nothing(started)
                return
            # Transient (the service unreachable, say): pull again after a pause. The
            # pull says nothing of what is there, so the watermark stays.
            now = time.monotonic()
            if now - self._failure_logged >= FAILURE_LOG_EVERY_S:
                self._failure_logged = now
                _LOG.warning("pull from %s failed (said again every %d s while it fails): %s",
                             self._subscription, FAILURE_LOG_EVERY_S, err)
            time.sleep(1)
            return
        self._failure_logged = -FAILURE_LOG_EVERY_S
        # The protobuf under the client's wrapper: reading each field through the
        # wrapper (a datetime made for each publish time) cost more than the pull.
        received = type(response).pb(response).received_messages
        if not received:
            self._found_nothing(started)
            time.sleep(0.05)  # the service answered at once that nothing is there
            return
        pulled = []
        for each in received:
            message = each.message
            published = message.publish_time
            publish_ms = published.seconds * 1000 + published.nanos // 1_000_000
            record = RawRecord(f"pubsub:{message.message_id}", message.data, publish_ms)
            pulled.append((record, Timestamp(micros=publish_ms * 1000), each.ack_id))
        # Held (and so holding the watermark) before any reader can take them.
        LEASES.hold(self._subscription,
                    [(ack_id, timestamp.micros) for _, timestamp, ack_id in pulled])
        # The subscription's own deadline may be as short as 10 s: lease them now.
        self._extend([ack_id for _, _, ack_id in pulled])
        self._queue.extend(pulled)
        self._empty_since = None

    def _found_nothing(self, pull_started: float) -> None:
        if self._empty_since is None:
            self._empty_since = pull_started
        else:
            self._empty_since = max(self._empty_since, pull_started)

    def _hand_back(self) -> None:
        """Returns every queued message to Pub/Sub at once (deadline 0)."""
        unsent = []
        while True:
            try:
                _, _, ack_id = self._queue.popleft()
            except IndexError:
                break
            unsent.append(ack_id)
        if not unsent:
            return
        LEASES.release(unsent)
        _modify_deadline(self._subscription, unsent, 0, "handing back")

    def _acknowledge_again(self) -> None:
        again = LEASES.take_unacked(self._subscription)
        if again:
            _acknowledge(self._subscription, again)

    def _extend_leases(self) -> None:
        self._extend(LEASES.held(self._subscription))

    def _extend(self, ack_ids: list[str]) -> None:
        _modify_deadline(self._subscription, ack_ids, ACK_DEADLINE_S, "extending the leases of")


class PubSubReader(UnboundedReader):
    """Takes from its process's puller of the subscription; emits RawRecords
    stamped with their publish time."""

    def __init__(self, subscription: str, drain_file: str | None = None):
        self._subscription = subscription
        self._drain_file = drain_file
        self._puller: _Puller | None = None
        self._emitted: list[str] = []  # ack ids since the last checkpoint
        self._current: tuple[RawRecord, Timestamp] | None = None
        self._watermark = Timestamp(0)
        self._next_watermark = 0.0  # monotonic time at which it is worked out again
        self._oldest_held = metrics.gauge(metrics.OLDEST_UNACKED_MS)
        self._acknowledged = metrics.counter(metrics.MESSAGES_ACKNOWLEDGED)

    def start(self) -> bool:
        """Joins its process's puller; once its first pull has answered (or
        FIRST_PULL_WAIT_S has passed), the first message, if one came."""
        self._puller = _Puller.join(self._subscription, self._drain_file)
        self._puller.first_pull.wait(FIRST_PULL_WAIT_S)
        return self.advance()

    def advance(self) -> bool:
        self._emitted_current()
        taken = self._puller.take()
        if taken is None:
            return False
        record, timestamp, ack_id = taken
        self._current = (record, timestamp)
        self._emitted.append(ack_id)
        return True

    def _emitted_current(self) -> None:
        """The runner asks for the next message, or a checkpoint, only once it has
        emitted the current one (the watermark holds it until its checkpoint is
        finalized: `_Leases`)."""
        self._current = None

    def get_current(self) -> RawRecord:
        return self._current[0]

    def get_current_timestamp(self) -> Timestamp:
        return self._current[1]

    def get_watermark(self) -> Timestamp:
        """Asked after every message emitted: worked out again at most every
        WATERMARK_EVERY_S (a watermark a moment old is only a moment behind)."""
        if self._puller is not None and self._current is None and self._puller.drained():
            self._watermark = MAX_TIMESTAMP  # the end: the runner closes every window
        elif self._puller is not None and time.monotonic() >= self._next_watermark:
            self._next_watermark = time.monotonic() + WATERMARK_EVERY_S
            self._watermark = max(self._watermark, self._puller.watermark() or self._watermark)
            held_s = oldest_held_s(self._subscription)
            self._oldest_held.set(int((held_s or 0) * 1000))  # the live run's lag
            self._acknowledged.inc(LEASES.take_acknowledged())
            retries.report_outcomes()  # this process's S3 calls, while its writes wait
        return self._watermark

    def get_checkpoint_mark(self) -> PubSubCheckpoint:
        if self._puller is not None:
            self._emitted_current()
        mark = PubSubCheckpoint(self._subscription, self._emitted)
        self._emitted = []
        return mark

    def close(self) -> None:
        """Leaves the puller; the last reader to leave hands back what was pulled
        and not emitted, at once."""
        if self._puller is not None:
            self._emitted_current()
        puller, self._puller = self._puller, None
        if puller is not None:
            puller.leave()


class PubSubSource(UnboundedSource):
    """A subscription, read by `splits` readers at once.

    Each split has its own `index`: the SDK caches a reader between bundles under
    its source and checkpoint, and identical splits would share an entry.
    `drain_file`: a file on the workers' machine whose creation drains the readers
    (the launcher's, for a runner whose workers share its machine); None: none.
    """

    def __init__(self, subscription: str, splits: int = 2, index: int = 0,
                 drain_file: str | None = None):
        self.subscription = subscription
        self.splits = splits
        self.index = index
        self.drain_file = drain_file

    def split(self, desired_num_splits: int, options: Any = None):
        count = max(1, min(desired_num_splits, self.splits))
        return [PubSubSource(self.subscription, 1, index, self.drain_file)
                for index in range(count)]

    def create_reader(self, options: Any, checkpoint_mark: Any) -> PubSubReader:
        # Pub/Sub keeps the position: what is not acknowledged comes again.
        return PubSubReader(self.subscription, self.drain_file)

    def get_checkpoint_mark_coder(self):
        return coders.PickleCoder()

    def default_output_coder(self):
        return coders.registry.get_coder(RawRecord)
