"""Dead-letter records: what could not be forwarded, with the reason why.

Each record is one JSON line:
    {"source": "in.ndjson:7", "stage": "parse", "reason": "not JSON: ...", "raw": "..."}
`raw` is the record as it came, so it can be fixed and replayed: given as input
again, a dead-letter file is read back as the records it holds (`replayed`). Bytes
that are not UTF-8 are in `raw_base64` as well, exactly. A record is kept whole, whatever
its size: an oversize one replays once the limit that refused it is raised (a dead
letter's line is larger than its record, by at most `MAX_LINE_GROWTH` times; parsing
reads a line that large when it holds a dead letter). A bad event of a good batch
holds its batch with that event alone, so that a replay forwards the event once.
A dead letter that could not get its record back (a merge that failed on live input,
whose message is gone) holds the batch as it left the settings, and says so in
`raw_form`.

Every per-record step sends what it cannot handle to the `DEAD_LETTERS`
output: the bad data it expects (parsing) with its reason, and anything it
did not expect (`unexpected`), so that no record can stop a run.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

DEAD_LETTERS = "dead_letters"
MAX_REASON_CHARS = 1000
# How much larger than its record a dead letter's JSON line can be: a record of
# control characters written as \u00XX escapes, six bytes for each byte; not UTF-8,
# its text with replacement characters plus its base64. The fields around it are
# under LINE_FIELDS_BYTES (the reason is cut to MAX_REASON_CHARS).
MAX_LINE_GROWTH = 6
LINE_FIELDS_BYTES = 64 * 1024


_KEYS = frozenset({"source", "stage", "reason", "raw"})
# raw_truncated_from_chars: a record cut to its first MiB by version 0.1.0, which
# kept no more of an oversize record.
_OPTIONAL_KEYS = frozenset({"raw_base64", "raw_truncated_from_chars", "raw_form"})
AFTER_SETTINGS = "after_settings"  # raw_form of a batch that is not the record as it came
# A replayed record's source: "<dead-letter file>:<line> (dead letter of <its source>)".
REPLAY_MARKER = " (dead letter of "


def dead_letter(
    source: str, stage: str, reason: str, raw: Any, raw_form: str | None = None
) -> dict:
    record = {"source": source, "stage": stage, "reason": reason, "raw": raw}
    if isinstance(raw, bytes):
        try:
            record["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            record["raw"] = raw.decode("utf-8", errors="replace")
            record["raw_base64"] = base64.b64encode(raw).decode("ascii")
    if raw_form:
        record["raw_form"] = raw_form
    return record


def replayed(value: Any) -> tuple[str, bytes] | None:
    """A dead-letter record read back as input → (its source, its record as it came);
    None for anything else. Raises ValueError for one that cannot be replayed."""
    if not isinstance(value, dict) or not _KEYS <= value.keys() <= _KEYS | _OPTIONAL_KEYS:
        return None
    if not isinstance(value["source"], str):
        return None
    if value["raw"] is None:
        raise ValueError("a dead letter without its record cannot be replayed")
    if not isinstance(value["raw"], str):
        return None
    if "raw_truncated_from_chars" in value:
        raise ValueError("a dead letter whose record was cut to its first MiB cannot be replayed")
    if "raw_base64" in value:
        try:
            return value["source"], base64.b64decode(value["raw_base64"], validate=True)
        except (binascii.Error, TypeError):
            raise ValueError("a dead letter whose raw_base64 is not base64") from None
    return value["source"], value["raw"].encode("utf-8", errors="surrogatepass")


def unexpected(err: BaseException) -> str:
    """The reason for a failure no rule foresaw: the error's type and message."""
    return f"unexpected {type(err).__name__}: {err}"[:MAX_REASON_CHARS]
