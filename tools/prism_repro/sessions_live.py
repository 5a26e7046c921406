"""Minimal reproduction: Prism (Beam 2.77) does not merge session windows whose
elements come from an unbounded source in separate bundles.

    .venv/bin/python tools/prism_repro/sessions_live.py

An UnboundedSource emits three elements for one key, one a second, each stamped
with the time it is emitted; its watermark follows the clock 0.5 s behind.
Sessions with a 3-second gap: the three windows overlap, so one group of three is
expected ([0, 1, 2]). Prism fires three groups of one, each on time. (The same
three elements from a TestStream are merged right, and the DirectRunner merges
them from ReadFromPubSub. The forwarder keeps live sessions in state with a timer
instead, on Prism: `tests/stages/test_batching.py`,
`test_a_session_over_three_bundles_of_a_live_source_is_one_batch_on_prism`.)
"""

import os
import sys
import time

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.unbounded_source import CheckpointMark, UnboundedReader, UnboundedSource
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms import window
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

OUT = "/tmp/prism_sessions_live.txt"


class ThreeTicks(UnboundedReader):
    def __init__(self):
        self.started, self.next = time.time(), 0

    def start(self):
        return self.advance()

    def advance(self):
        if self.next < 3 and time.time() >= self.started + self.next:
            self.current, self.at = self.next, Timestamp.of(time.time())
            self.next += 1
            return True
        return False

    def get_current(self):
        return ("device", self.current)

    def get_current_timestamp(self):
        return self.at

    def get_watermark(self):
        if self.next >= 3 and time.time() > self.started + 10:
            return MAX_TIMESTAMP
        return Timestamp.of(time.time() - 0.5)

    def get_checkpoint_mark(self):
        return CheckpointMark()


class ThreeTicksSource(UnboundedSource):
    def split(self, desired_num_splits, options=None):
        return [self]

    def create_reader(self, options, checkpoint_mark):
        return ThreeTicks()

    def get_checkpoint_mark_coder(self):
        return coders.PickleCoder()


def record(group):
    with open(OUT, "a") as out:
        out.write(f"group: {sorted(group[1])}\n")


if __name__ == "__main__":
    prism = os.path.join(os.path.dirname(sys.executable), "prism")
    options = PipelineOptions(["--runner=PrismRunner", f"--prism_location={prism}"])
    options.view_as(StandardOptions).streaming = True
    if os.path.exists(OUT):
        os.remove(OUT)
    with beam.Pipeline(options=options) as p:
        (p | beam.io.Read(ThreeTicksSource())
           | beam.WindowInto(window.Sessions(3))
           | beam.GroupByKey()
           | beam.Map(record))
    print(open(OUT).read(), end="")
