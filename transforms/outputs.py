"""A stage's two outputs: what goes on, and its dead letters (`DEAD_LETTERS`)."""

from __future__ import annotations

import apache_beam as beam

from transforms.rules.dead_letters import DEAD_LETTERS

__all__ = ["with_dead_letters"]


def with_dead_letters(pcoll, label: str, fn: beam.DoFn, main: str = "batches") -> dict:
    """`pcoll | label >> ParDo(fn)`, whose tagged DEAD_LETTERS go apart:
    {main: what goes on, "dead_letters": dead letters}."""
    out = pcoll | label >> beam.ParDo(fn).with_outputs(DEAD_LETTERS, main=main)
    return {main: out[main], "dead_letters": out[DEAD_LETTERS]}
