"""ReadBatches: input files (`transforms.io.inputs`) → raw records, files spread
over workers; a file that breaks off sends a dead letter for the rest."""

from __future__ import annotations

import logging
import time
import zlib
from typing import Iterator

import apache_beam as beam
from apache_beam import pvalue

from transforms import metrics
from transforms.io import progress, s3
from transforms.io.inputs import expand_pattern, open_input, read_records
from transforms.outputs import with_dead_letters
from transforms.rules.dead_letters import DEAD_LETTERS, dead_letter
from transforms.values import RawRecord

__all__ = ["ReadBatches"]

_LOG = logging.getLogger(__name__)
RECORDS_PER_REPORT = 10_000
STAGE = "read"


class _ExpandPatternFn(beam.DoFn):
    """A path or glob → the files it names. Matching nothing is an error."""

    def __init__(self, connection: s3.S3Connection):
        self._connection = connection

    def setup(self):
        self._client = s3.make_client(self._connection)

    def process(self, pattern: str) -> Iterator[str]:
        paths = expand_pattern(pattern, self._client)
        if not paths:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        _LOG.info("--input %s: %d file(s)", pattern, len(paths))
        yield from paths


class _ReadRecordsFn(beam.DoFn):
    """A file → its raw records, its bytes and records reported as progress.

    A file that cannot be read to its end (corrupt gzip, a read error) keeps
    the records before the damage and sends a dead letter for the rest.
    """

    def __init__(self, connection: s3.S3Connection):
        self._connection = connection

    def setup(self):
        self._client = s3.make_client(self._connection)
        # Records are counted where they are parsed; a file that breaks off
        # counts as one more record, dead-lettered here.
        self._records_read = metrics.counter(metrics.RECORDS_READ)
        self._records_dead = metrics.counter(metrics.RECORDS_DEAD_LETTERED)

    def process(self, path: str) -> Iterator[RawRecord]:
        started = time.monotonic()
        count = 0
        try:
            with open_input(path, self._client) as stream:
                for record in read_records(path, stream):
                    count += 1
                    yield record
                    if count % RECORDS_PER_REPORT == 0:
                        progress.report(records=RECORDS_PER_REPORT)
        except (OSError, EOFError, zlib.error) as err:
            reason = f"file unreadable after {count} records: {type(err).__name__}: {err}"
            _LOG.warning("%s: %s", path, reason)
            self._records_read.inc()
            self._records_dead.inc()
            yield pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(path, STAGE, reason, ""))
            return
        finally:
            progress.report(records=count % RECORDS_PER_REPORT)
        _LOG.info("%s: %d records in %.1f s", path, count, time.monotonic() - started)

    def finish_bundle(self):
        progress.flush()


class ReadBatches(beam.PTransform):
    """Paths or globs → {"records": RawRecord, "dead_letters": dict}, files spread
    over workers.

    `part` of `parts`: this read takes every `parts`-th of the files in path order,
    starting at the `part`-th (a graph that reads the files in several places, each
    with its part)."""

    def __init__(self, patterns: list[str], connection: s3.S3Connection, part: int = 0,
                 parts: int = 1):
        super().__init__()
        self._patterns = list(patterns)
        self._connection = connection
        self._part = part
        self._parts = parts

    def expand(self, pbegin):
        files = (
            pbegin
            | "Patterns" >> beam.Create(self._patterns)
            | "MatchFiles" >> beam.ParDo(_ExpandPatternFn(self._connection))
        )
        if self._parts > 1:
            files = (files
                     | "AllFiles" >> beam.combiners.ToList()
                     | "FilesOfThisPart" >> beam.FlatMap(_files_of_part, self._part, self._parts))
        files = files | "SpreadFiles" >> beam.Reshuffle()
        return with_dead_letters(files, "ReadRecords", _ReadRecordsFn(self._connection),
                                 main="records")


def _files_of_part(paths: list[str], part: int, parts: int) -> list[str]:
    """Every `parts`-th path in order from the `part`-th: as many files in each part
    as can be (a file that two patterns match is read twice, as by one read)."""
    return sorted(paths)[part::parts]
