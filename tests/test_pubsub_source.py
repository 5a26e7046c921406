"""PubSubSource's ack rule, against a real local Pub/Sub server (pstest).

A message is acknowledged only when the checkpoint covering it is finalized: one
read by a process that is killed before that comes again, and forwarded after a
restart; one whose checkpoint was finalized does not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from transforms import pubsub_source
from transforms.pubsub_source import PubSubReader

PROJECT = "ack-project"
ACK_DEADLINE_S = 10  # Pub/Sub's least


@pytest.fixture
def subscription(pubsub_emulator, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    from google.cloud import pubsub_v1

    name = f"ack-{os.getpid()}-{time.monotonic_ns()}"
    topic = f"projects/{PROJECT}/topics/{name}"
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=topic)
    subscription = f"projects/{PROJECT}/subscriptions/{name}"
    pubsub_v1.SubscriberClient().create_subscription(
        request={"name": subscription, "topic": topic, "ack_deadline_seconds": ACK_DEADLINE_S})
    for n in range(20):
        publisher.publish(topic, f"batch {n}".encode()).result()
    return subscription


def read_all(reader: PubSubReader, expected: int, deadline_s: float) -> list[bytes]:
    got = []
    deadline = time.monotonic() + deadline_s
    has = reader.start()
    while len(got) < expected and time.monotonic() < deadline:
        if has:
            got.append(reader.get_current().data)
        else:
            time.sleep(0.05)
        has = reader.advance()
    return got


KILLED_READER = """
import sys, time
from transforms import pubsub_source
from transforms.pubsub_source import PubSubReader
reader = PubSubReader(sys.argv[1])
got, has = 0, reader.start()
while got < 20:
    if has:
        got += 1
    else:
        time.sleep(0.05)
    has = reader.advance()
reader.get_checkpoint_mark()  # cut, never finalized: the bundle did not commit
print("read", got, flush=True)
time.sleep(600)
"""


def test_messages_come_again_unless_their_checkpoint_is_finalized(subscription):
    killed = subprocess.Popen([sys.executable, "-c", KILLED_READER, subscription], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert killed.stdout.readline().strip() == "read 20"
    killed.send_signal(signal.SIGKILL)  # its leases stop being extended
    killed.wait()

    reader = PubSubReader(subscription)
    again = read_all(reader, 20, deadline_s=pubsub_source.ACK_DEADLINE_S + 15)
    assert sorted(again) == sorted(f"batch {n}".encode() for n in range(20))
    reader.get_checkpoint_mark().finalize_checkpoint()  # the runner committed them
    reader.close()

    after = PubSubReader(subscription)
    assert read_all(after, 1, deadline_s=pubsub_source.ACK_DEADLINE_S + 5) == []
    after.close()


def test_a_reader_extends_the_leases_of_what_it_holds(subscription):
    """Held past the subscription's 10-second ack deadline, unfinalized messages are not
    handed to another reader."""
    holder = PubSubReader(subscription)
    assert len(read_all(holder, 20, deadline_s=20)) == 20
    other = PubSubReader(subscription)
    assert read_all(other, 1, deadline_s=pubsub_source.ACK_DEADLINE_S + 5) == []
    holder.get_checkpoint_mark().finalize_checkpoint()
    holder.close()
    other.close()
