"""ApplySettings: ArrivedBatch → ArrivedBatch in outbound form, settings applied."""

from __future__ import annotations

from typing import Iterator

import apache_beam as beam
from apache_beam import pvalue

from transforms import metrics
from transforms.outputs import with_dead_letters
from transforms.rules import batch_json
from transforms.rules.dead_letters import DEAD_LETTERS, dead_letter, unexpected
from transforms.rules.settings import ForwardingSettings, apply_settings
from transforms.values import ArrivedBatch

__all__ = ["ApplySettings"]

STAGE = "apply_settings"


class _ApplySettingsFn(beam.DoFn):
    """Filters event types, strips fields, adds unique_id; counts what it removes.

    A batch left with no events is not sent unless `send_batches_without_events`.
    """

    def __init__(self, settings: ForwardingSettings, send_batches_without_events: bool):
        self._settings = settings
        self._send_empty = send_batches_without_events

    def setup(self):
        self._empty_batches = metrics.counter(metrics.BATCHES_WITHOUT_EVENTS)
        self._events_dead = metrics.counter(metrics.EVENTS_DEAD_LETTERED)
        self._filtered = {}

    def _count_filtered(self, reason: str, count: int) -> None:
        if reason not in self._filtered:
            self._filtered[reason] = metrics.filtered_counter(reason)
        self._filtered[reason].inc(count)

    def process(self, arrived: ArrivedBatch) -> Iterator:
        try:
            forwarded, filtered = apply_settings(arrived.batch, self._settings)
        except Exception as err:  # no record may stop the run: a dead letter says why
            self._events_dead.inc(len(arrived.batch.get("events") or ()))
            raw = batch_json.encode(arrived.batch)
            yield pvalue.TaggedOutput(
                DEAD_LETTERS, dead_letter(arrived.source, STAGE, unexpected(err), raw)
            )
            return
        for reason, count in filtered.items():
            self._count_filtered(reason, count)
        if not forwarded.get("events") and not self._send_empty:
            self._empty_batches.inc()
            return
        yield arrived._replace(batch=forwarded)


class ApplySettings(beam.PTransform):
    """ArrivedBatch → {"batches": ArrivedBatch, "dead_letters": dict}."""

    def __init__(self, settings: ForwardingSettings, send_batches_without_events: bool = False):
        super().__init__()
        self._fn = _ApplySettingsFn(settings, send_batches_without_events)

    def expand(self, batches):
        return with_dead_letters(batches, "ApplySettings", self._fn)
