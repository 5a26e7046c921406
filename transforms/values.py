"""The values that flow through the forwarder, in the order of the README's diagram,
and the two small values that say how batches are grouped and files laid out.

    RawRecord → ArrivedBatch → (ShuffledBatch) → ForwardedBatch → FileContent → FileWritten

A batch crosses the shuffles as a `transforms.machinery.shuffled.ShuffledBatch` (compact
bytes with a coder of its own), between ArrivedBatch and ForwardedBatch.
Plain values only: no Beam, no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

from transforms.rules import batch_json
from transforms.rules.naming import DateFolders
from transforms.rules.packing import DEFAULT_MAX_BATCHES_PER_FILE, DEFAULT_MAX_FILE_BYTES


class RawRecord(NamedTuple):
    """One input record as read (ReadBatches, ReadPubSubRecords), before parsing."""

    source: str  # `path:line`, `path#index`, `path`, or `pubsub:<message id>`
    data: bytes
    publish_time_ms: int | None = None  # Pub/Sub only


class ArrivedBatch(NamedTuple):
    """One parsed input batch with what grouping needs, taken before any stripping."""

    batch: dict
    source: str  # where it came from: "file:line" or a message id
    arrival_ms: int
    device: str  # the grouping key
    app_name: str


class ForwardedBatch(NamedTuple):
    """One outbound batch (BatchPerDevice) and what packing it into files needs."""

    line: bytes  # the batch's JSON
    first_event_ms: int | None  # its first event's time (`grouping.event_time_ms`)
    app_name: str
    device: str
    newest_arrival_ms: int
    event_count: int

    @property
    def batch(self) -> dict:
        """The batch itself, decoded again (for tests and tools, not the pipeline)."""
        return batch_json.decode(self.line)


class FileContent(NamedTuple):
    """The lines of one file and what its name is made of."""

    app_name: str
    date_folder: str  # "" for none, else YYYY-MM-DD
    lines: list[bytes]  # JSON, UTF-8
    newest_arrival_ms: int
    event_count: int


class FileWritten(NamedTuple):
    """One file written (or found already written) under its key."""

    key: str
    outcome: str
    lines: int
    events: int
    bytes: int


class BatchingMode(enum.Enum):
    """How a device's batches become outbound batches (SPEC section 4)."""

    FIXED = "fixed"  # Send as Batch: UTC-aligned fixed windows per device
    SESSIONS = "sessions"  # Wait for Complete Batch: one batch per session
    PER_EVENT = "per_event"  # Send as Batch off: every event its own batch


DEFAULT_WINDOW_SIZE_S = 600
DEFAULT_SESSION_GAP_S = 1800
# How long after a window closes its late data still goes out as a further
# batch. Pub/Sub publish times make late data rare; a day covers replays.
DEFAULT_ALLOWED_LATENESS_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class Batching:
    """How batches are grouped per device: the mode and its windows, over arrival time.

    Fixed windows also pack the files of every mode (a file never spans two)."""

    mode: BatchingMode = BatchingMode.FIXED
    window_size_s: int = DEFAULT_WINDOW_SIZE_S
    session_gap_s: int = DEFAULT_SESSION_GAP_S
    allowed_lateness_s: int = DEFAULT_ALLOWED_LATENESS_S

    @property
    def window_size_us(self) -> int:
        return self.window_size_s * 1_000_000


class LiveSessions(NamedTuple):
    """How a live run keeps sessions (`transforms.batching.BatchPerDevice`).

    `by_timer`: in the forwarder's own state, per key, with an event-time timer
    (`transforms.live_sessions`), for a runner that holds the watermark at a pending
    timer; else by Beam's merging session windows.
    `shards`: 0 to key that state by device; else by one of this many shards of the
    device, for a runner that keeps an entry for every key it has ever seen, so that
    its entries stop growing once every shard has been seen."""

    by_timer: bool = True
    shards: int = 0


# --output_format: mParticle's NDJSON, or Parquet (`transforms.rules.parquet_rows`).
OUTPUT_FORMATS = ("json", "parquet")


@dataclasses.dataclass(frozen=True)
class FileLayout:
    """How forwarded batches become files: their folder, compression, date folders,
    shards per app and window, and the bounds of one file."""

    folder: str | None = None
    compress: bool = False
    date_folders: DateFolders = DateFolders.NONE
    output_format: str = "json"  # OUTPUT_FORMATS
    shards: int = 1
    max_batches: int = DEFAULT_MAX_BATCHES_PER_FILE
    max_bytes: int = DEFAULT_MAX_FILE_BYTES
