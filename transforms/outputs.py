"""A stage's two outputs: what goes on, and its dead letters (`DEAD_LETTERS`)."""

from __future__ import annotations

from typing import Callable

import apache_beam as beam

from transforms.rules.dead_letters import DEAD_LETTERS


def as_is(transform: beam.PTransform, _part: int = 0) -> beam.PTransform:
    """A transform placed as the pipeline's others are (no resource hints), whatever
    part of the data it takes (`_part`, which a `placed` callable is given): the default
    of the `placed` arguments here and in `transforms.write`."""
    return transform


def with_dead_letters(pcoll, label: str, fn: beam.DoFn, main: str = "batches",
                      placed: Callable[[beam.PTransform], beam.PTransform] = as_is,
                      ) -> dict:
    """`pcoll | label >> ParDo(fn)`, whose tagged DEAD_LETTERS go apart:
    {main: what goes on, "dead_letters": dead letters}. `placed`: the ParDo → the
    transform applied (for example with resource hints)."""
    out = pcoll | label >> placed(beam.ParDo(fn).with_outputs(DEAD_LETTERS, main=main))
    return {main: out[main], "dead_letters": out[DEAD_LETTERS]}
