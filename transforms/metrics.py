"""The pipeline's Beam counters, in one namespace, and the run summary.

Counters reconcile at the end of a bounded run:

    events_read = events_forwarded + events_filtered.* + events_dead_lettered

and every input record is either parsed (`batches_read`) or dead-lettered
whole (`records_dead_lettered`).
"""

from __future__ import annotations

from typing import Mapping

from apache_beam.metrics import Metrics

NAMESPACE = "mparticle_s3"

RECORDS_READ = "records_read"
RECORDS_DEAD_LETTERED = "records_dead_lettered"
BATCHES_READ = "batches_read"
EVENTS_READ = "events_read"
EVENTS_DEAD_LETTERED = "events_dead_lettered"
EVENTS_FILTERED_PREFIX = "events_filtered."
EVENTS_DUPLICATE = EVENTS_FILTERED_PREFIX + "duplicate"
BATCHES_WITHOUT_EVENTS = "batches_without_events_not_sent"
BATCHES_FORWARDED = "batches_forwarded"
EVENTS_FORWARDED = "events_forwarded"
LATE_BATCHES = "late_batches"
LATE_EVENTS = "late_events"
FILES_WRITTEN = "files_written"
FILES_ALREADY_PRESENT = "files_already_present"
BYTES_WRITTEN = "bytes_written"
# Forwarded files' groups (app, date folder, shard, window) by their pane's timing:
# file_panes.early, .on_time, .late (each pane of a group is one file or more).
FILE_PANES_PREFIX = "file_panes."
DEAD_LETTER_RECORDS = "dead_letter_records_written"
DEAD_LETTER_FILES = "dead_letter_files_written"
DEAD_LETTER_BYTES = "dead_letter_bytes_written"
# A gauge: how long the oldest message a live reader's process holds has waited,
# pulled and not yet acknowledged (ms).
OLDEST_UNACKED_MS = "oldest_unacknowledged_ms"
MESSAGES_ACKNOWLEDGED = "messages_acknowledged"
# S3 calls retried after a transient error (throttling, 5xx, timeouts, resets).
S3_RETRIES = "s3_retries"
# A gauge: 1 when the last S3 call a worker process made was accepted, 0 when it failed.
S3_LAST_CALL_OK = "s3_last_call_ok"
# Live files by the time from their window's end to their upload's end: counters per
# bucket (`window_to_file_bucket`), and their sum, for a histogram; not in the summary.
WINDOW_TO_FILE_PREFIX = "window_end_to_file_ms."
WINDOW_TO_FILE_SUM = WINDOW_TO_FILE_PREFIX + "sum"
WINDOW_TO_FILE_BOUNDS_S = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600)


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def gauge(name: str):
    return Metrics.gauge(NAMESPACE, name)


def window_to_file_bucket(latency_ms: int) -> str:
    """The counter of a file `latency_ms` after its window's end: that of the smallest
    bound (s) it is within, or "inf"."""
    for bound_s in WINDOW_TO_FILE_BOUNDS_S:
        if latency_ms <= bound_s * 1000:
            return f"{WINDOW_TO_FILE_PREFIX}le_{bound_s}"
    return f"{WINDOW_TO_FILE_PREFIX}le_inf"


def filtered_counter(reason: str):
    return counter(EVENTS_FILTERED_PREFIX + reason)


def unaccounted_events(counters: Mapping[str, int]) -> int:
    """events_read minus everything that became of them; 0 when they reconcile."""
    filtered = sum(
        value for name, value in counters.items() if name.startswith(EVENTS_FILTERED_PREFIX)
    )
    return counters.get(EVENTS_READ, 0) - (
        counters.get(EVENTS_FORWARDED, 0) + filtered + counters.get(EVENTS_DEAD_LETTERED, 0)
    )


def unaccounted_records(counters: Mapping[str, int]) -> int:
    """records_read minus parsed and dead-lettered records; 0 when they reconcile."""
    return counters.get(RECORDS_READ, 0) - (
        counters.get(BATCHES_READ, 0) + counters.get(RECORDS_DEAD_LETTERED, 0)
    )


def reconciled(counters: Mapping[str, int]) -> bool:
    """Whether every record and every event read is accounted for."""
    return not unaccounted_events(counters) and not unaccounted_records(counters)


def _verdict(gap: int, what: str) -> str:
    return "reconciled" if gap == 0 else f"NOT reconciled: {gap:+,} {what} unaccounted"


def format_summary(counters: Mapping[str, int], live: bool = False) -> str:
    """A plain-text table of the counters and the reconciliation lines; `live`: a live
    run's counters when it stopped, which need not reconcile (batches in open windows)."""
    shown = sorted(name for name in counters if not name.startswith(WINDOW_TO_FILE_PREFIX))
    width = max((len(name) for name in shown), default=10)
    lines = ["Run summary:"]
    lines += [f"  {name:<{width}}  {counters[name]:>12,}" for name in shown]
    if live:
        lines.append("  (a live run stopped: batches still in open windows are not counted as "
                     "forwarded)")
        return "\n".join(lines)
    lines.append(
        "  records: read = parsed + dead-lettered -> "
        + _verdict(unaccounted_records(counters), "records")
    )
    lines.append(
        "  events: read = forwarded + filtered out + dead-lettered -> "
        + _verdict(unaccounted_events(counters), "events")
    )
    return "\n".join(lines)
