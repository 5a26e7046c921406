"""PubSubSource's ack rule, against a real local Pub/Sub server (pstest).

A message is acknowledged only when the checkpoint covering it is finalized: one
read by a process that is killed before that comes again, and forwarded after a
restart; one whose checkpoint was finalized does not.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import poll, read_and_die, read_in_another_process
from tests.tcp_fault_proxy import ConnectionCutter
from transforms.io import pubsub_source
from transforms.io.pubsub_source import PubSubReader

PROJECT = "ack-project"
ACK_DEADLINE_S = 10  # Pub/Sub's least
LEASE_S = 5  # extended every second: a few seconds to spare on a loaded machine


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
        reader.get_watermark()  # as the runner asks after each claim
    return got


def short_leases(monkeypatch) -> None:
    """Leases of LEASE_S, extended every second: what this process holds and does not
    acknowledge comes again LEASE_S after its last extension (not the source's 30 s)."""
    monkeypatch.setattr(pubsub_source, "ACK_DEADLINE_S", LEASE_S)
    monkeypatch.setattr(pubsub_source, "EXTEND_EVERY_S", 1)


def test_messages_come_again_unless_their_checkpoint_is_finalized(subscription, monkeypatch):
    short_leases(monkeypatch)
    read_and_die(subscription, 20, LEASE_S)

    reader = PubSubReader(subscription)
    again = read_all(reader, 20, deadline_s=LEASE_S + 15)
    assert sorted(again) == sorted(f"batch {n}".encode() for n in range(20))
    reader.get_checkpoint_mark().finalize_checkpoint()  # the runner committed them
    reader.close()

    # Unacknowledged, they would come again LEASE_S after the close (no more extensions).
    after = PubSubReader(subscription)
    assert read_all(after, 1, deadline_s=2 * LEASE_S + 2) == []
    after.close()


def test_a_sample_of_the_waiting_messages_is_handed_back_for_the_run_to_read(subscription):
    """What a live run trains its shuffle's dictionary on: the messages waiting, which
    a reader then gets at once, not after the subscription's ack deadline."""
    sample = pubsub_source.sample_messages(subscription)
    assert sorted(sample) == sorted(f"batch {n}".encode() for n in range(20))
    reader = PubSubReader(subscription)
    assert len(read_all(reader, 20, deadline_s=ACK_DEADLINE_S / 2)) == 20
    reader.get_checkpoint_mark().finalize_checkpoint()
    reader.close()
    started = time.monotonic()
    assert pubsub_source.sample_messages(subscription) == []  # none waiting: no wait
    assert time.monotonic() - started < 2


def test_a_sample_that_cannot_reach_pubsub_is_empty_and_takes_nothing(
    subscription, pubsub_emulator, monkeypatch
):
    """Pub/Sub refusing every connection: the sample is empty once its retries end (the
    run then goes without a dictionary), and raises nothing; every message is still
    there for the run."""
    with ConnectionCutter(pubsub_emulator, max_life_s=3600, refuse_rate=1.0) as cutter:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", cutter.endpoint)
        started = time.monotonic()
        assert pubsub_source.sample_messages(subscription) == []
        assert time.monotonic() - started < pubsub_source.PULL_TIMEOUT_S + 5
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    reader = PubSubReader(subscription)
    assert len(read_all(reader, 20, deadline_s=ACK_DEADLINE_S / 2)) == 20
    reader.get_checkpoint_mark().finalize_checkpoint()
    reader.close()


def test_a_reader_extends_the_leases_of_what_it_holds(subscription, monkeypatch):
    """Held past the subscription's 10-second ack deadline and several of the reader's
    own leases, unfinalized messages are not handed to another reader."""
    short_leases(monkeypatch)
    holder = PubSubReader(subscription)
    assert len(read_all(holder, 20, deadline_s=20)) == 20
    other = PubSubReader(subscription)
    assert read_all(other, 1, deadline_s=max(ACK_DEADLINE_S, 2 * LEASE_S) + 2) == []
    holder.get_checkpoint_mark().finalize_checkpoint()
    holder.close()
    other.close()


def test_a_new_reader_starts_on_the_messages_waiting(subscription):
    """A reader's start waits for its process's first pull, so a run on a waiting
    backlog reads it in its first bundle, rather than a poll (a second) later: before
    it waited, `start` found the queue still empty."""
    reader = PubSubReader(subscription)
    started = time.monotonic()
    try:
        assert reader.start(), "the first pull's messages were not there at the start"
        assert time.monotonic() - started < pubsub_source.FIRST_PULL_WAIT_S
        got, deadline = [reader.get_current().data], time.monotonic() + 10
        while len(got) < 20 and time.monotonic() < deadline:
            if reader.advance():
                got.append(reader.get_current().data)
            else:
                time.sleep(0.05)
        assert sorted(got) == sorted(f"batch {n}".encode() for n in range(20))
    finally:
        reader.get_checkpoint_mark().finalize_checkpoint()
        reader.close()


def test_readers_in_one_process_share_what_is_pulled(subscription):
    """A reader the runner stopped driving (parked in a cache it will not be taken
    from again) holds nothing back from the reader that replaced it."""
    parked = PubSubReader(subscription)
    first = [parked.get_current().data] if parked.start() else []
    assert poll(lambda: len(pubsub_source.LEASES.held(subscription)) == 20, deadline_s=10)
    replacement = PubSubReader(subscription)
    rest = read_all(replacement, 20 - len(first), deadline_s=10)
    assert sorted(first + rest) == sorted(f"batch {n}".encode() for n in range(20))
    for reader in (parked, replacement):
        reader.get_checkpoint_mark().finalize_checkpoint()
        reader.close()


def test_what_no_reader_asks_for_goes_back_to_pubsub(subscription, monkeypatch):
    """Messages queued in a process whose readers stopped asking go to another process."""
    monkeypatch.setattr(pubsub_source, "UNDRAINED_S", 2.0)
    abandoned = PubSubReader(subscription)
    emitted = 1 if abandoned.start() else 0
    # its puller has taken the backlog
    assert poll(lambda: len(pubsub_source.LEASES.held(subscription)) == 20, deadline_s=10)
    assert read_in_another_process(subscription, 20 - emitted, deadline_s=20) == 20 - emitted
    abandoned.get_checkpoint_mark().finalize_checkpoint()
    abandoned.close()


def test_the_watermark_holds_every_message_until_its_checkpoint_is_finalized(subscription):
    """No reader's watermark passes a message that a reader of the process took and
    whose checkpoint is not finalized: not while it is emitted, nor after, until the
    runner has committed it (so a runner that tracks one watermark for several
    readers fires no window before their messages are committed). Then it moves on."""
    emitting = PubSubReader(subscription)
    has = emitting.start()
    deadline = time.monotonic() + 10
    while not has and time.monotonic() < deadline:
        time.sleep(0.05)
        has = emitting.advance()
    assert has
    held = emitting.get_current_timestamp()
    other = PubSubReader(subscription)
    assert len(read_all(other, 19, deadline_s=10)) == 19  # the rest, all newer or as new
    other.get_checkpoint_mark().finalize_checkpoint()  # the other's part is committed
    time.sleep(1)  # pulls find nothing more
    assert other.advance() is False
    assert other.get_watermark() <= held
    emitting.advance()  # the runner asks for the next: the held one was emitted
    time.sleep(1.5)  # more empty pulls
    assert other.get_watermark() <= held, "the watermark passed an uncommitted message"
    mark = emitting.get_checkpoint_mark()
    assert other.get_watermark() <= held
    mark.finalize_checkpoint()  # committed
    moved_on = poll(lambda: other.get_watermark() > held, deadline_s=10, every_s=0.1)
    assert moved_on, "the watermark did not move past the committed message"
    for reader in (emitting, other):
        reader.close()


def test_an_acknowledgement_that_fails_is_sent_again(
    subscription, pubsub_emulator, monkeypatch, caplog
):
    """Pub/Sub unreachable when a checkpoint is finalized: finalizing does not raise
    (the runner would not finalize again), the messages stay leased, and their
    acknowledgement goes once Pub/Sub is back; they do not come again."""
    monkeypatch.setattr(pubsub_source, "ACK_TIMEOUT_S", 2.0)
    monkeypatch.setattr(pubsub_source, "ACK_DEADLINE_S", ACK_DEADLINE_S)  # a lost ack shows soon
    monkeypatch.setattr(pubsub_source, "EXTEND_EVERY_S", 3)
    with ConnectionCutter(pubsub_emulator, max_life_s=3600, refuse_rate=0.0) as cutter:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", cutter.endpoint)
        reader = PubSubReader(subscription)
        assert len(read_all(reader, 20, deadline_s=10)) == 20
        mark = reader.get_checkpoint_mark()
        cutter.refuse_rate = 1.0
        cutter.cut_all()
        mark.finalize_checkpoint()
        assert "acknowledging 20 messages" in caplog.text
        cutter.refuse_rate = 0.0
        time.sleep(ACK_DEADLINE_S + 2)  # past a lease: unacknowledged, they would be free
        reader.close()
    again = read_in_another_process(subscription, 1, deadline_s=ACK_DEADLINE_S + 5,
                                    env={**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_emulator})
    assert again == 0


def test_the_oldest_held_message_is_found_whatever_was_released_around_it():
    """`_Leases.oldest_held_s` (asked at every element the source emits): the message
    held longest, among those of one subscription, as messages are released in any
    order; none once all are. It once scanned every held message at each element,
    half of the SDK harness's time in a 40,000-message drain on Prism."""
    leases = pubsub_source._Leases()
    leases.hold("s", [("old", 1)])
    time.sleep(0.05)
    leases.hold("other", [("elsewhere", 1)])
    leases.hold("s", [(f"new-{n}", 2) for n in range(25_000)])
    assert leases.oldest_held_s("s") >= 0.05
    leases.release([f"new-{n}" for n in range(25_000)])  # all but the old one
    assert leases.oldest_held_s("s") >= 0.05
    leases.release(["old"])
    assert leases.oldest_held_s("s") is None
    assert leases.oldest_held_s("other") is not None
    leases.hold("s", [("a", 3), ("b", 4)])
    time.sleep(0.02)
    leases.hold("s", [("c", 5)])
    leases.release(["b"])
    assert 0.02 <= leases.oldest_held_s("s") < 1
    leases.release(["a"])
    assert leases.oldest_held_s("s") < 0.02
