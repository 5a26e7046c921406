"""PubSubSource: a Pub/Sub subscription as a portable unbounded source.

Read with `beam.io.Read(PubSubSource(subscription))`, which every portable runner
executes as a splittable DoFn (Prism, Flink, Spark's job servers), unlike Beam's
`ReadFromPubSub`, which only the DirectRunner and Dataflow run natively.

- Each reader pulls in a thread of its own into a bounded queue, so `advance()`
  never waits on the network, and keeps extending the ack deadline of every
  message it holds until that message is acknowledged.
- A message is acknowledged only when the checkpoint that covers it is
  finalized: a runner finalizes a bundle only after it has committed its output
  (Flink when a checkpoint completes, Dataflow after its durable commit). So a
  crash before that leaves the message unacknowledged, and Pub/Sub delivers it
  again.
- The watermark is the oldest publish time among messages pulled and not yet
  emitted; when the subscription is idle it follows the clock, so windows of
  quiet devices close.
- `split(n)` gives n readers of the same subscription; Pub/Sub shares the
  messages out between them.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from apache_beam import coders
from apache_beam.io.unbounded_source import CheckpointMark, UnboundedReader, UnboundedSource
from apache_beam.utils.timestamp import Timestamp

from transforms.read import RawRecord

_LOG = logging.getLogger(__name__)
MAX_MESSAGES_PER_PULL = 1000
QUEUE_MESSAGES = 20_000  # pulled and not yet emitted, per reader
# A held message's lease: what a crash leaves unacknowledged comes again this soon.
ACK_DEADLINE_S = 30
EXTEND_EVERY_S = 10
ACK_CHUNK = 1000  # ids per Acknowledge / ModifyAckDeadline request
IDLE_WATERMARK_LAG_S = 1.0  # how far behind the clock the watermark of an idle reader is
PULL_TIMEOUT_S = 5.0
# ack id → when it was pulled: what this process holds unacknowledged, so that
# its deadline keeps being extended until the checkpoint covering it is finalized.
_HELD: dict[str, float] = {}
_HELD_LOCK = threading.Lock()
MAX_HOLD_S = 30 * 60  # past this a message is left to be redelivered


def _subscriber():
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient()


def _in_chunks(ids: list[str]):
    for start in range(0, len(ids), ACK_CHUNK):
        yield ids[start:start + ACK_CHUNK]


class PubSubCheckpoint(CheckpointMark):
    """The messages one bundle emitted; finalizing it acknowledges them."""

    def __init__(self, subscription: str, ack_ids: list[str]):
        self.subscription = subscription
        self.ack_ids = ack_ids

    def finalize_checkpoint(self) -> None:
        if not self.ack_ids:
            return
        client = _subscriber()
        for chunk in _in_chunks(self.ack_ids):
            client.acknowledge(request={"subscription": self.subscription, "ack_ids": chunk})
        with _HELD_LOCK:
            for ack_id in self.ack_ids:
                _HELD.pop(ack_id, None)


class PubSubReader(UnboundedReader):
    """Pulls in a background thread; emits RawRecords stamped with their publish time."""

    def __init__(self, subscription: str):
        self._subscription = subscription
        self._client = _subscriber()
        self._queue: collections.deque = collections.deque()
        self._emitted: list[str] = []  # ack ids since the last checkpoint
        self._current: tuple[RawRecord, Timestamp] | None = None
        self._watermark = Timestamp(0)
        self._idle = False
        self._stop = threading.Event()
        self._puller = threading.Thread(target=self._pull_forever, daemon=True,
                                        name="pubsub-pull")

    def start(self) -> bool:
        self._puller.start()
        return self.advance()

    def advance(self) -> bool:
        try:
            record, timestamp, ack_id = self._queue.popleft()
        except IndexError:
            self._current = None
            return False
        self._current = (record, timestamp)
        self._emitted.append(ack_id)
        return True

    def get_current(self) -> RawRecord:
        return self._current[0]

    def get_current_timestamp(self) -> Timestamp:
        return self._current[1]

    def get_watermark(self) -> Timestamp:
        if self._queue:
            oldest = self._queue[0][1]
        elif self._idle:
            oldest = Timestamp.of(time.time() - IDLE_WATERMARK_LAG_S)
        else:
            oldest = self._watermark
        self._watermark = max(self._watermark, oldest)
        return self._watermark

    def get_checkpoint_mark(self) -> PubSubCheckpoint:
        mark = PubSubCheckpoint(self._subscription, self._emitted)
        self._emitted = []
        return mark

    def close(self) -> None:
        """Stops pulling and hands back what was pulled but not emitted, at once."""
        self._stop.set()
        self._puller.join(timeout=PULL_TIMEOUT_S + 1)
        unsent = [ack_id for _, _, ack_id in self._queue]
        self._queue.clear()
        with _HELD_LOCK:
            for ack_id in unsent:
                _HELD.pop(ack_id, None)
        for chunk in _in_chunks(unsent):
            try:
                self._client.modify_ack_deadline(request={
                    "subscription": self._subscription, "ack_ids": chunk,
                    "ack_deadline_seconds": 0})
            except Exception as err:  # noqa: BLE001 - they come again after their deadline
                _LOG.warning("handing back messages of %s failed: %s", self._subscription, err)

    def _pull_forever(self) -> None:
        last_extended = time.monotonic()
        while not self._stop.is_set():
            if len(self._queue) < QUEUE_MESSAGES:
                self._pull_once()
            else:
                time.sleep(0.05)
            if time.monotonic() - last_extended > EXTEND_EVERY_S:
                last_extended = time.monotonic()
                self._extend_leases()

    def _pull_once(self) -> None:
        from google.api_core import exceptions

        try:
            response = self._client.pull(
                request={"subscription": self._subscription,
                         "max_messages": MAX_MESSAGES_PER_PULL},
                timeout=PULL_TIMEOUT_S,
            )
        except (exceptions.DeadlineExceeded, exceptions.RetryError):
            self._idle = True
            return
        except exceptions.GoogleAPICallError as err:  # transient: pull again after a pause
            _LOG.warning("pull from %s failed: %s", self._subscription, err)
            time.sleep(1)
            return
        received = response.received_messages
        self._idle = not received
        if not received:
            time.sleep(0.05)  # the service answered at once that nothing is there
            return
        now = time.monotonic()
        with _HELD_LOCK:
            _HELD.update((message.ack_id, now) for message in received)
        # The subscription's own deadline may be as short as 10 s: lease them now.
        self._extend([message.ack_id for message in received])
        for message in received:
            published = message.message.publish_time
            publish_ms = int(published.timestamp() * 1000)
            record = RawRecord(f"pubsub:{message.message.message_id}", message.message.data,
                               publish_ms)
            self._queue.append((record, Timestamp(micros=publish_ms * 1000), message.ack_id))

    def _extend_leases(self) -> None:
        now = time.monotonic()
        with _HELD_LOCK:
            for ack_id in [a for a, at in _HELD.items() if now - at > MAX_HOLD_S]:
                del _HELD[ack_id]
            held = list(_HELD)
        self._extend(held)

    def _extend(self, ack_ids: list[str]) -> None:
        for chunk in _in_chunks(ack_ids):
            try:
                self._client.modify_ack_deadline(request={
                    "subscription": self._subscription, "ack_ids": chunk,
                    "ack_deadline_seconds": ACK_DEADLINE_S})
            except Exception as err:  # noqa: BLE001 - a lease lost means a redelivery, no more
                _LOG.warning("extending ack deadlines on %s failed: %s", self._subscription, err)


class PubSubSource(UnboundedSource):
    """A subscription, read by `splits` readers at once.

    Each split has its own `index`: the SDK caches a reader between bundles under
    its source and checkpoint, and identical splits would share an entry.
    """

    def __init__(self, subscription: str, splits: int = 2, index: int = 0):
        self.subscription = subscription
        self.splits = splits
        self.index = index

    def split(self, desired_num_splits: int, options: Any = None):
        count = max(1, min(desired_num_splits, self.splits))
        return [PubSubSource(self.subscription, 1, index) for index in range(count)]

    def create_reader(self, options: Any, checkpoint_mark: Any) -> PubSubReader:
        # Pub/Sub keeps the position: what is not acknowledged comes again.
        return PubSubReader(self.subscription)

    def get_checkpoint_mark_coder(self):
        return coders.PickleCoder()

    def default_output_coder(self):
        return coders.registry.get_coder(RawRecord)
