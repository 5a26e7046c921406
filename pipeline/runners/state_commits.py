"""A bundle's user state sent to the runner all at once and then awaited, not a round
trip per key in turn.

Beam's Python SDK harness commits a bundle's user state cell by cell:
`FnApiUserStateContext.commit` calls each cell's `commit`, and a bag's commit sends
its clear and its append to the runner and waits for the answer before the next
cell's are sent. A cell is a (key, state) pair, and a bundle of the live sessions
step (`transforms.live_sessions`) adds batches to hundreds of keys' bags, so its
commit would be hundreds of round trips to the runner one after another (on Prism,
which sends no cache tokens, each through its state stream and back), and at a
steady 1,000 batches/s on two cores that step would fall behind (README,
Performance → Live).

`pipeline_bag_commits` makes the commit send every bag cell's requests first and
then wait for all their answers. A runner answers the requests of a state stream
in order (Prism reads them in one goroutine per stream, and Beam's own bag commit
already sends a clear and an append without waiting in between), so each cell's
requests keep their order; cells of different keys never depended on each other's;
and the bundle still finishes only once every answer is in, as before. Other kinds
of state (sets, combining values) commit as Beam commits them.

The commit is Beam 2.77's, changed in one respect, and reads that version's private
fields, so it is installed only on that version (`BEAM_VERSION`, the one
`setup.py` pins); on any other, Beam's own commit stays.
"""

from __future__ import annotations

import logging
import threading

import apache_beam
from apache_beam.runners.worker import bundle_processor

BEAM_VERSION = "2.77.0"
_LOG = logging.getLogger(__name__)
BEAM_COMMIT = bundle_processor.FnApiUserStateContext.commit  # Beam's own, as imported
_installed: bool | None = None  # None: not looked at yet in this process
_lock = threading.Lock()


def commit(context: bundle_processor.FnApiUserStateContext) -> None:
    """`FnApiUserStateContext.commit`, each bag cell's requests sent before any
    answer is awaited."""
    answers = []
    for state in context._all_states.values():
        if type(state) is not bundle_processor.SynchronousBagRuntimeState:
            state.commit()
            continue
        answer = None
        if state._cleared:
            answer = state._state_handler.clear(state._state_key)
        if state._added_elements:
            answer = state._state_handler.extend(
                state._state_key, state._value_coder.get_impl(), state._added_elements)
        if answer is not None:  # the cell's last request: answered after its first
            answers.append(answer)
    for answer in answers:
        answer.get()


def pipeline_bag_commits() -> bool:
    """Installs `commit` in this process, once (the live sessions step's `setup` calls
    it: `RunnerProfile.worker_setup`); whether it is installed."""
    global _installed
    with _lock:
        if _installed is None:
            _installed = apache_beam.__version__ == BEAM_VERSION
            if _installed:
                bundle_processor.FnApiUserStateContext.commit = commit
            else:
                _LOG.info("Beam %s, not %s: user state is committed as Beam does, a "
                          "key at a time", apache_beam.__version__, BEAM_VERSION)
        return _installed
