"""`pipeline.runners.state_commits`: a bundle's bag cells sent to the runner together, then
every answer awaited; each cell's requests, and what they carry, as Beam's own commit
sends them. The live sessions step's equality tests on Prism
(`test_live_sessions_on_prism_write_what_a_bounded_run_writes_for_the_same_arrivals`)
run with it installed in the harness."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import coders
from apache_beam.runners.worker import bundle_processor
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindow

from pipeline.runners import state_commits

BAG = userstate.BagStateSpec("batches", coders.StrUtf8Coder())
VALUE = userstate.ReadModifyWriteStateSpec("value", coders.VarIntCoder())


class _Answer:
    def __init__(self, log: list, cell: tuple):
        self._log, self._cell = log, cell

    def get(self):
        self._log.append(("awaited", *self._cell))


class _Runner:
    """What the harness's state handler is asked: each request, and each answer
    awaited, in order."""

    def __init__(self):
        self.log: list[tuple] = []

    def clear(self, state_key):
        self.log.append(("clear", *_cell(state_key)))
        return _Answer(self.log, _cell(state_key))

    def extend(self, state_key, coder, elements):
        self.log.append(("append", *_cell(state_key), tuple(elements)))
        return _Answer(self.log, _cell(state_key))


def _cell(state_key) -> tuple[str, str]:
    bag = state_key.bag_user_state
    return bag.user_state_id, coders.StrUtf8Coder().decode_nested(bag.key)


def _bundle(runner: _Runner) -> bundle_processor.FnApiUserStateContext:
    """A bundle's state: three keys' bags written (one cleared and rewritten), a
    read-modify-write value, and a bag only read."""
    context = bundle_processor.FnApiUserStateContext(
        runner, "sessions", coders.StrUtf8Coder(), coders.coders.GlobalWindowCoder())
    for key, added in (("a", ["1", "2"]), ("b", ["3"]), ("c", ["4"])):
        bag = context.get_state(BAG, key, GlobalWindow())
        if key == "b":
            bag.clear()
        for value in added:
            bag.add(value)
    context.get_state(VALUE, "a", GlobalWindow()).write(7)
    context.get_state(BAG, "d", GlobalWindow())  # looked at, not written: no request
    return context


def test_every_bag_cell_is_sent_before_any_answer_is_awaited():
    runner = _Runner()
    state_commits.commit(_bundle(runner))
    assert runner.log == [
        ("append", "batches", "a", ("1", "2")),
        ("clear", "batches", "b"), ("append", "batches", "b", ("3",)),
        ("append", "batches", "c", ("4",)),
        # not a bag cell: committed as Beam does
        ("clear", "value", "a"), ("append", "value", "a", (7,)), ("awaited", "value", "a"),
        # each bag cell's last request answered before the commit returns
        ("awaited", "batches", "a"), ("awaited", "batches", "b"), ("awaited", "batches", "c"),
    ]


def test_beams_own_commit_waits_for_each_cell_in_turn():
    """What the above changes: the same requests, each cell's in the same order."""
    runner = _Runner()
    state_commits.BEAM_COMMIT(_bundle(runner))
    assert runner.log == [
        ("append", "batches", "a", ("1", "2")), ("awaited", "batches", "a"),
        ("clear", "batches", "b"), ("append", "batches", "b", ("3",)),
        ("awaited", "batches", "b"),
        ("append", "batches", "c", ("4",)), ("awaited", "batches", "c"),
        ("clear", "value", "a"), ("append", "value", "a", (7,)), ("awaited", "value", "a"),
    ]


def test_installed_on_the_pinned_beam():
    assert beam.__version__ == state_commits.BEAM_VERSION  # setup.py's pin
    assert state_commits.pipeline_bag_commits()
    assert bundle_processor.FnApiUserStateContext.commit is state_commits.commit
