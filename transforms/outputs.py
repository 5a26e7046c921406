"""A stage's two outputs: what goes on, and its dead letters (`DEAD_LETTERS`); and the
steps made once per part of a graph: their labels (`numbered`), their outputs together
(`flattened`)."""

from __future__ import annotations

from typing import Callable

import apache_beam as beam

from transforms.rules.dead_letters import DEAD_LETTERS

__all__ = ["flattened", "numbered", "with_dead_letters"]


def with_dead_letters(pcoll, label: str, fn: beam.DoFn, main: str = "batches",
                      placed: Callable[[beam.PTransform], beam.PTransform] = lambda step: step,
                      ) -> dict:
    """`pcoll | label >> ParDo(fn)`, whose tagged DEAD_LETTERS go apart:
    {main: what goes on, "dead_letters": dead letters}. `placed`: the step → the step
    where it runs (a worker process of its own)."""
    out = pcoll | label >> placed(beam.ParDo(fn).with_outputs(DEAD_LETTERS, main=main))
    return {main: out[main], "dead_letters": out[DEAD_LETTERS]}


def numbered(label: str, part: int, parts: int) -> str:
    """A step's label, numbered by its part where there are several."""
    return f"{label}{part}" if parts > 1 else label


def flattened(pcolls: list, label: str):
    """The parts' PCollections as one (the one itself where there is one)."""
    return pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | label >> beam.Flatten()
