"""Pure rule for packing forwarded batches into files bounded by count and bytes.

A file holds whole batches only: a batch is never split, so one batch larger
than the byte bound goes out alone in a file of its own.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

# Defaults that avoid the small-files problem in S3 query engines (Athena,
# Hive, Presto plan one split per object) while keeping one file in memory
# cheap: 64 MiB of uncompressed NDJSON is a few MiB gzipped.
DEFAULT_MAX_BATCHES_PER_FILE = 100_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


def line_bytes(line: bytes) -> int:
    """Bytes a line takes in a file: the line and its newline."""
    return len(line) + 1


def pack(
    items: Iterable[T], size_of: Callable[[T], int], max_items: int, max_bytes: int
) -> Iterator[list[T]]:
    """Groups items into files in order, each within both bounds where it can be.

    >>> list(pack([b"a", b"bb", b"c"], line_bytes, max_items=2, max_bytes=100))
    [[b'a', b'bb'], [b'c']]
    """
    current: list[T] = []
    current_bytes = 0
    for item in items:
        size = size_of(item)
        if current and (len(current) >= max_items or current_bytes + size > max_bytes):
            yield current
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        yield current
