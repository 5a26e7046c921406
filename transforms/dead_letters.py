"""Dead-letter records: what could not be forwarded, with the reason why.

Each record is one JSON line:
    {"source": "in.ndjson:7", "stage": "parse", "reason": "not JSON: ...", "raw": "..."}
`raw` is the input text as it came (invalid UTF-8 replaced), so it can be
fixed and replayed.

Every per-record step sends what it cannot handle to the `DEAD_LETTERS`
output: the bad data it expects (parsing) with its reason, and anything it
did not expect (`unexpected`), so that no record can stop a run.
"""

from __future__ import annotations

from typing import Any

DEAD_LETTERS = "dead_letters"
MAX_RAW_CHARS = 1024 * 1024  # an oversize record keeps its first MiB and says so
MAX_REASON_CHARS = 1000


def dead_letter(source: str, stage: str, reason: str, raw: Any) -> dict:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    record = {"source": source, "stage": stage, "reason": reason, "raw": raw}
    if isinstance(raw, str) and len(raw) > MAX_RAW_CHARS:
        record["raw"] = raw[:MAX_RAW_CHARS]
        record["raw_truncated_from_chars"] = len(raw)
    return record


def unexpected(err: BaseException) -> str:
    """The reason for a failure no rule foresaw: the error's type and message."""
    return f"unexpected {type(err).__name__}: {err}"[:MAX_REASON_CHARS]
