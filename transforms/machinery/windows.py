"""Windows in time: the windowing of live batches and files, and the time an outbound
batch is stamped with (the last microsecond of its window, every way to the windows),
which packing into files uses."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import trigger
from apache_beam.utils.timestamp import Duration

__all__ = ["late_firing_windowing", "session_end_us", "window_end_us"]


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
    (`RunnerProfile.late_files_batched`).
    Without either this is Beam's default trigger (once at the watermark, then
    once per late element), which runs on merging windows (sessions) on every runner
    that merges them; not every one runs an AfterWatermark with late firings on them
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


def window_end_us(start_us: int, size_us: int) -> int:
    """An outbound batch's time: the last microsecond of its window (as Beam's)."""
    return start_us + size_us - 1


def session_end_us(end_ms: int) -> int:
    """A session's outbound batch's time: the last microsecond of its window."""
    return end_ms * 1000 - 1
