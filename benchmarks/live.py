"""Live throughput: a Pub/Sub backlog drained, and a steady stream kept up with.

    .venv/bin/python -m benchmarks.live                        # both runners, full size
    .venv/bin/python -m benchmarks.live --backlog 2000 --rate 100 --seconds 10
    .venv/bin/python -m benchmarks.live --runners PrismRunner --backlog 0 \
        --rate 1000 --seconds 600 --sessions 10                # sessions, 10-second gap

Starts the embedded S3 server and a local Pub/Sub server (pstest), then for each
runner (the DirectRunner with Beam's ReadFromPubSub, Prism with PubSubSource):
  1. drain (`--backlog` > 0): publishes `--backlog` batches, starts `python -m
     pipeline` on the subscription with 10-second windows, and times from the
     pipeline's start to the moment every forwarded event is in S3 (a listing of the
     bucket every `DRAIN_POLL_S` first shows its last file), not to its stop: batches/s;
  2. steady (`--seconds` > 0): starts the pipeline, makes every batch it will send
     (so that making them takes no CPU from the run), then publishes `--rate`
     batches a second for `--seconds`, and notes when each file first shows in S3:
     against its window's end, or with `--sessions GAP_S` (`--wait_for_complete_batch`,
     files in the forwarder's default windows, devices that send a batch every 2 s for
     20 s, then stop, a tenth of the rate's devices starting each second;
     `--sessions_together`: in bursts) against each session's end, its device's last
     batch sent plus the gap. It samples the RSS of the
     pipeline's processes every second and prints the peak of the second minute and
     of the last one.
Each part also says how much of the machine's CPU time its hypervisor gave to other
machines ("steal", from /proc/stat) while it ran: on a shared virtual machine that
time is lost to the run, whatever the pipeline does.
While a run goes, events are counted by a byte scan of each new object; afterwards
every object is parsed whole to say whether every event arrived.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

import boto3
import psutil

from pipeline.tools.local_services import free_port, moto_server, pstest_binary
from pipeline.tools.publish_sample import moved_to
from pipeline.tools.sample_data import generate
from transforms import metrics
from transforms.rules import batch_json
from transforms.rules.settings import ForwardingSettings, apply_settings

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 10
PUBLISH_CHUNK = 500
SESSION_EVERY_S = 2  # a sessions run's device sends a batch this often ...
SESSION_ACTIVE_S = 20  # ... for this long, then stops
PROJECT = "bench-project"
_names = itertools.count()


def forwarded_events(batches: list[dict]) -> int:
    return sum(len(apply_settings(b, ForwardingSettings())[0]["events"]) for b in batches)


# The watcher lists the files stamped within this many seconds of now at every poll,
# and the whole bucket this often.
RECENT_S = 120
DRAIN_POLL_S = 0.25  # a drain's listing of the bucket: a file is seen this late at most
FULL_LIST_S = 30


class Bucket:
    """The objects a run writes: when each was first seen, and its events.

    While a run goes, events are counted by a byte scan (each forwarded event has
    one "event_type" key), so that watching costs the machine little CPU beside
    the pipeline; `events_by_device` parses every object whole afterwards. For the
    same reason a poll lists only the files whose name's stamp (their newest
    arrival) is within `RECENT_S` of now, after that stamp under each folder and app
    seen (`StartAfter`: a name sorts by its stamp there), and the whole bucket every
    `FULL_LIST_S`: a listing of the whole bucket every half second took a third of
    a core of the embedded S3 server 20 minutes into a sessions run that had written
    3,000 files, on a machine of two. So a file first seen by a whole listing may be
    seen up to `FULL_LIST_S` late, and that only when it was written more than
    `RECENT_S` after its newest batch arrived (its lag is past that already), or
    when it is a folder's and app's first and the start of its name, up to the first
    "_", is that of a folder and app seen before (an app whose name has a "_" and
    begins as another's does). The first files of a folder and app are found by a
    listing of the names' starts (`Delimiter="_"`: a line per folder and app, not per
    file) at every poll; the whole listing alone would find them up to `FULL_LIST_S`
    late, and a run's first files would look that much later than they were.
    """

    def __init__(self, client, name: str):
        self.client, self.name = client, name
        self.first_seen: dict[str, float] = {}
        self.events = 0
        self._leads: set[str] = set()  # "<folder>/<app>_" of the files seen
        self._starts: set[str] = set()  # the names' starts up to the first "_" listed
        self._whole_at = 0.0

    def poll(self, whole: bool = False) -> None:
        """Notes the files not seen before: the recent ones, or all of them when
        `whole` or when the last whole listing is `FULL_LIST_S` old."""
        now = time.time()
        if whole or now >= self._whole_at + FULL_LIST_S:
            self._whole_at = now
            keys = self._keys()
        else:
            keys = itertools.chain(self._keys_of_new_starts(), self._keys_since(now - RECENT_S))
        for key in keys:
            if key not in self.first_seen:
                self.first_seen[key] = time.time()
                self.events += self._body(key).count(b'"event_type":')
                self._leads.add(key.rsplit("_", 2)[0] + "_")

    def events_by_device(self) -> collections.Counter:
        """The events written, per device, from every object parsed whole."""
        found: collections.Counter = collections.Counter()
        for _, batch in self.batches():
            found[batch["mp_deviceid"]] += len(batch["events"])
        return found

    def batches(self) -> Iterator[tuple[str, dict]]:
        for key in self.first_seen:
            for line in self._body(key).splitlines():
                yield key, json.loads(line)

    def lags(self) -> list[float]:
        """Seconds from each file's window end to its first sight."""
        lags = []
        for key, seen in self.first_seen.items():
            stamp = key.rsplit("_", 2)[-2]  # newest arrival, %Y%m%d%H%M%S + microseconds
            newest = time.mktime(time.strptime(stamp[:14], "%Y%m%d%H%M%S")) - time.timezone
            lags.append(seen - (newest // WINDOW_S + 1) * WINDOW_S)
        return sorted(lags)

    def session_lags(self, last_sent: dict[str, float], gap_s: int) -> dict[str, float]:
        """Per device, seconds from its session's end (its last batch sent, plus the
        gap) to the first sight of the file that holds it."""
        lags: dict[str, float] = {}
        for key, batch in self.batches():
            device = batch["mp_deviceid"]
            lags[device] = max(lags.get(device, 0.0),
                               self.first_seen[key] - last_sent[device] - gap_s)
        return lags

    def _keys(self, **listed) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, **listed)
        for page in pages:
            for item in page.get("Contents", ()):
                key = item["Key"]
                if "Verification" not in key and "_dead_letters" not in key:
                    yield key

    def _keys_of_new_starts(self) -> Iterator[str]:
        """The keys under each start of a name, up to its first "_", not listed before:
        a new folder's or app's first files, which no lead seen yet would list."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Delimiter="_")
        for page in pages:
            for common in page.get("CommonPrefixes", ()):
                start = common["Prefix"]
                if start not in self._starts:
                    self._starts.add(start)
                    yield from self._keys(Prefix=start)

    def _keys_since(self, since: float) -> Iterator[str]:
        """The keys of the files stamped at `since` or after (UTC, as `lags` reads them)."""
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(since))
        for lead in list(self._leads):
            yield from self._keys(Prefix=lead, StartAfter=lead + stamp)

    def _body(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()


class Memory:
    """The RSS of the pipeline's processes (the launcher, the runner, the SDK harness),
    sampled every second in a thread while the run goes; and the machine's CPU time
    stolen by its hypervisor (`stolen_share`)."""

    def __init__(self, pid: int):
        self.samples: list[tuple[float, dict[str, int]]] = []  # (time, RSS by process)
        self.cpu: list[tuple[float, float, float]] = []  # (time, CPU s in all, stolen)
        # (time, {(name, pid): CPU s so far}) of every process this benchmark started
        self.cpu_by_process: list[tuple[float, dict[tuple[str, int], float]]] = []
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(pid,), daemon=True)
        self._thread.start()

    def _sample(self, pid: int) -> None:
        while not self._done.wait(1.0):
            self.cpu.append((time.time(), *_cpu_seconds()))
            self.cpu_by_process.append((time.time(), self._cpu_by_process()))
            try:
                root = psutil.Process(pid)
                rss = {"launcher": root.memory_info().rss}
                for child in root.children(recursive=True):
                    command = " ".join(child.cmdline())
                    name = ("SDK harness" if "SdkHarness" in command else
                            "Prism" if "prism" in command else child.name())
                    rss[name] = rss.get(name, 0) + child.memory_info().rss
            except psutil.Error:
                continue
            self.samples.append((time.time(), rss))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _cpu_by_process(self) -> dict[tuple[str, int], float]:
        """CPU seconds (user and system) so far of each process the benchmark started:
        the pipeline's (its launcher, Prism, each SDK harness) and the local servers."""
        used = {}
        for process in psutil.Process().children(recursive=True):
            try:
                command = " ".join(process.cmdline())
                times = process.cpu_times()
            except psutil.Error:
                continue
            name = ("launcher" if process.pid == self._pid else
                    "SDK harness" if "SdkHarness" in command or "sdk_worker" in command else
                    "Prism" if "prism" in command else
                    "Pub/Sub server" if "pstest" in command else
                    "S3 server" if "moto_server" in command else process.name())
            used[name, process.pid] = times.user + times.system
        return used

    def cpu_shares(self, since: float, until: float) -> dict[str, float]:
        """Each process's CPU time between two times (time.time()), as a share of one
        core's time then: the SDK harnesses apart, in the order they started."""
        within = [(at, used) for at, used in self.cpu_by_process if since <= at <= until]
        if len(within) < 2:
            return {}
        (first_at, first), (last_at, last) = within[0], within[-1]
        shares: dict[str, float] = {}
        harnesses = 0
        for (name, pid), seconds in sorted(last.items(), key=lambda item: item[0][1]):
            used = seconds - first.get((name, pid), 0.0)  # 0: started since
            if name == "SDK harness":
                harnesses += 1
                name = f"SDK harness {harnesses}"
            shares[name] = shares.get(name, 0.0) + used / (last_at - first_at)
        return shares

    def stolen_share(self, since: float, until: float) -> float | None:
        """The share of the machine's CPU time between two times (time.time()) that its
        hypervisor gave to others ("steal"): a virtual machine whose cores are shared
        runs that much slower then, whatever the pipeline does; None on a machine that
        does not say."""
        within = [sample for sample in self.cpu if since <= sample[0] <= until]
        if len(within) < 2 or within[-1][1] <= within[0][1]:
            return None
        return (within[-1][2] - within[0][2]) / (within[-1][1] - within[0][1])

    def most_stolen_minute(self, since: float, until: float) -> float | None:
        """The largest `stolen_share` of a minute between two times, minutes 10 s apart."""
        shares = (self.stolen_share(at, at + 60) for at in range(int(since), int(until) - 59, 10))
        return max((share for share in shares if share is not None), default=None)

    def peak_mib(self, since: float, until: float) -> dict[str, float] | None:
        """The peak between two times (time.time()), MiB: of all the processes
        ("all"), and of each."""
        within = [rss for at, rss in self.samples if since <= at < until]
        if not within:
            return None
        peaks = {"all": max(sum(rss.values()) for rss in within) / 2**20}
        for name in sorted({name for rss in within for name in rss}):
            peaks[name] = max(rss.get(name, 0) for rss in within) / 2**20
        return peaks


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds of every core in every state, of them stolen) since the boot."""
    times = psutil.cpu_times()
    stolen = getattr(times, "steal", 0.0)  # Linux's; guest time is within user time
    return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0), stolen


def new_subscription(publisher, subscriber) -> tuple[str, str]:
    name = f"live-{next(_names)}"
    topic = f"projects/{PROJECT}/topics/{name}"
    subscription = f"projects/{PROJECT}/subscriptions/{name}"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    return topic, subscription


def start_pipeline(runner: str, endpoint: str, bucket: str, subscription: str, log: Path,
                   *flags: str):
    """Windows of WINDOW_S unless `flags` ask for sessions, whose files keep the
    forwarder's default windows (`--window_size_s` groups their files: 10-s windows
    would make a file per 10 s at least, and many more once a window's batches spread
    over several panes)."""
    sessions = "--wait_for_complete_batch=true" in flags
    windows = () if sessions else (f"--window_size_s={WINDOW_S}",)
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", f"--s3_bucket_name={bucket}",
         f"--s3_endpoint_url={endpoint}", f"--input_subscription={subscription}",
         *windows, "--skip_bucket_check=true", f"--runner={runner}",
         *flags, *os.environ.get("LIVE_FLAGS", "").split()],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=dict(os.environ))


def _missing(found: dict[str, int], per_device: dict[str, int], last_sent: dict[str, float],
             began: float, log: Path) -> None:
    """LIVE_DEBUG: which devices' events are not all in S3, and when each sent its last
    batch (seconds into the run); the run's log is kept beside the benchmark's."""
    short = sorted((last_sent[device] - began, device, count, found[device])
                   for device, count in per_device.items() if found[device] != count)
    print(f"    {len(short):,} devices with events missing or doubled", flush=True)
    for at, device, count, got in short[:40]:
        print(f"    {device}: {got} of {count} events, last batch sent at {at:.2f} s", flush=True)
    kept = Path(tempfile.gettempdir()) / f"live-debug-{log.name}"
    shutil.copy(log, kept)
    print(f"    the run's log: {kept}", flush=True)


def _summary(log: Path) -> str:
    """The run's last status line (its final summary once it was stopped)."""
    lines = [line for line in log.read_text().splitlines() if "late batches" in line]
    return lines[-1].strip() if lines else "no status line"


def _file_panes(log: Path) -> str:
    """The run summary's count of file groups by pane timing (`metrics.FILE_PANES_PREFIX`):
    how many of the files went out early, on time and late."""
    found = re.findall(rf"^\s+{re.escape(metrics.FILE_PANES_PREFIX)}(\w+)\s+([\d,]+)$",
                       log.read_text(), re.MULTILINE)
    return ", ".join(f"{timing} {count}" for timing, count in found) or "not in the log"


def _verified(found: int, expected: int) -> dict:
    return {"complete": found == expected, "events": (found, expected)}


def _complete(result: dict) -> str:
    if result["complete"]:
        return "True"
    found, expected = result["events"]
    return f"False ({found:,} events of {expected:,})"


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=150)  # a stopped live run writes its open windows first
    except subprocess.TimeoutExpired:
        process.kill()


def encoded(batches: list[dict], now_ms: int) -> list[bytes]:
    return [batch_json.encode(moved_to(batch, now_ms)) for batch in batches]


def publish(publisher, topic: str, payloads: list[bytes]) -> None:
    """Publishes in requests of PUBLISH_CHUNK messages built as raw protobufs: the
    client's own per-message path would cost the machine a large part of a core at
    these rates, beside the pipeline under test."""
    from google.pubsub_v1.types import pubsub

    message, request = pubsub.PubsubMessage.pb(), pubsub.PublishRequest.pb()
    for start in range(0, len(payloads), PUBLISH_CHUNK):
        raw = request(topic=topic, messages=[
            message(data=data) for data in payloads[start:start + PUBLISH_CHUNK]])
        publisher.api.publish(request=pubsub.PublishRequest.wrap(raw))


def drain(runner, endpoint, s3, publisher, subscriber, backlog, work) -> dict:
    topic, subscription = new_subscription(publisher, subscriber)
    batches = list(generate(backlog, 2_000, seed=71))
    expected = forwarded_events(batches)
    publish(publisher, topic, encoded(batches, int(time.time() * 1000)))
    bucket = f"drain-{runner.lower()}"
    s3.create_bucket(Bucket=bucket)
    watched = Bucket(s3, bucket)
    started = time.time()
    process = start_pipeline(runner, endpoint, bucket, subscription, work / f"drain-{runner}.log")
    machine = Memory(process.pid)
    shown = started
    try:
        while watched.events < expected and time.time() - started < 900:
            time.sleep(DRAIN_POLL_S)
            watched.poll(whole=True)  # its files are stamped at the backlog's publishing
            if os.environ.get("LIVE_DEBUG") and time.time() >= shown + 1:
                shown = time.time()
                cpu = machine.cpu_shares(shown - 2, shown)  # two samples at least
                print(f"    {shown - started:.0f} s: {watched.events:,} of {expected:,} "
                      "events in S3; CPU over the last 2 s: " + ", ".join(
                          f"{name} {share:.2f}" for name, share in cpu.items()), flush=True)
        # The moment the last file was listed (a run that never completes: the end of
        # the wait), not the pipeline's stop (below), which comes 1.5-2.5 s later.
        seconds = (max(watched.first_seen.values())
                   if watched.first_seen and watched.events >= expected
                   else time.time()) - started
    finally:
        machine.stop()
        stop(process)
    return {"batches": backlog, "seconds": seconds, "per_s": backlog / seconds,
            "stop_s": time.time() - started - seconds,
            "stolen": machine.stolen_share(started, started + seconds),
            "cpu": machine.cpu_shares(started, started + seconds),
            **_verified(sum(watched.events_by_device().values()), expected)}


def session_devices(batches: Iterator[dict], rate: int, together: bool = False
                    ) -> Iterator[dict]:
    """The batches, `rate` a second, moved to devices that each send a batch every
    SESSION_EVERY_S seconds for SESSION_ACTIVE_S seconds and then stop, so that
    sessions keep closing while new ones open: a tenth of `rate` devices start every
    second, so sessions close at the pace they open, as a steady stream's do (the
    n-th batch of a second is the (n mod 10)-th of its device's session). `together`:
    every device of a SESSION_ACTIVE_S stretch starts in its first SESSION_EVERY_S and
    stops in its last, so that the stretch's sessions all close at once, a burst every
    SESSION_ACTIVE_S."""
    per_session = SESSION_ACTIVE_S // SESSION_EVERY_S
    for index, batch in enumerate(batches):
        second, nth = divmod(index, rate)
        if together:
            slot = nth + rate * (second % SESSION_EVERY_S)
            batch["mp_deviceid"] = f"bench-{second // SESSION_ACTIVE_S}-{slot}"
        else:
            started = second - SESSION_EVERY_S * (nth % per_session)
            batch["mp_deviceid"] = f"bench-{started}-{nth // per_session}"
        yield batch


def steady(runner, endpoint, s3, publisher, subscriber, rate, duration, work,
           gap_s: int | None = None, together: bool = False) -> dict:
    """`gap_s`: sessions with this gap (`--wait_for_complete_batch=true`), else windows;
    `together`: see `session_devices`."""
    topic, subscription = new_subscription(publisher, subscriber)
    mode = "sessions" if gap_s else "windows"
    bucket = f"steady-{mode}-{runner.lower()}"
    s3.create_bucket(Bucket=bucket)
    watched = Bucket(s3, bucket)
    log = work / f"steady-{mode}-{runner}.log"
    flags = ("--wait_for_complete_batch=true", f"--session_gap_s={gap_s}") if gap_s else ()
    process = start_pipeline(runner, endpoint, bucket, subscription, log, *flags)
    memory = Memory(process.pid)
    try:
        while "live; Ctrl-C stops" not in log.read_text():
            time.sleep(0.5)
        # Everything sent is made first, so that making it takes no CPU from the run;
        # each second's messages kept compressed (15 minutes at 2,000/s made 10 GB
        # of them, and the kernel killed the benchmark beside a Pub/Sub server of 5).
        batches = generate(rate * duration, 5_000, seed=72)
        if gap_s:
            batches = session_devices(batches, rate, together)
        now_ms, seconds = int(time.time() * 1000), []
        per_device: collections.Counter = collections.Counter()
        for second in range(duration):
            chunk = list(itertools.islice(batches, rate))
            for batch in chunk:
                per_device[batch["mp_deviceid"]] += forwarded_events([batch])
            seconds.append((zlib.compress(pickle.dumps(encoded(chunk, now_ms + second * 1000)), 1),
                            [batch["mp_deviceid"] for batch in chunk]))
        last_sent: dict[str, float] = {}
        done = threading.Event()

        def watch():
            while not done.is_set():
                watched.poll()
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(5)  # the source is pulling
        began = time.time()
        for second, (packed, devices) in enumerate(seconds):
            payloads = pickle.loads(zlib.decompress(packed))
            sending = time.time()
            publish(publisher, topic, payloads)
            last_sent.update((device, sending) for device in devices)
            time.sleep(max(0.0, began + second + 1 - time.time()))
        published_s = time.time() - began
        expected = sum(per_device.values())
        deadline = time.time() + (gap_s or 0) + 3 * WINDOW_S + 30
        while watched.events < expected and time.time() < deadline:
            time.sleep(1)
            if os.environ.get("LIVE_DEBUG"):
                print(f"    {time.time() - began:.0f} s: {watched.events:,} of {expected:,} "
                      "events in S3", flush=True)
        done.set()
        watcher.join()
        watched.poll(whole=True)
    finally:
        memory.stop()
        stop(process)
    found = watched.events_by_device()
    if os.environ.get("LIVE_DEBUG") and found != per_device:
        _missing(found, per_device, last_sent, began, log)
    ended = memory.samples[-1][0] if memory.samples else began
    split = None
    if gap_s:
        by_device = watched.session_lags(last_sent, gap_s)
        lags = sorted(by_device.values())
        split = _sessions_split(by_device, last_sent, began, began + published_s,
                                memory.stolen_share)
        if os.environ.get("LIVE_DEBUG"):
            print("    lags by whole second:", sorted(collections.Counter(
                int(lag) for lag in lags).items()), flush=True)
    else:
        lags = watched.lags()
    return {"rate": rate, "seconds": duration, "published_per_s": rate * duration / published_s,
            "files": len(watched.first_seen), "sessions": len(last_sent) if gap_s else None,
            **_verified(sum(found.values()), expected),
            "summary": _summary(log), "file_panes": _file_panes(log),
            **_lag_figures(lags), "sessions_split": split,
            "stolen": memory.stolen_share(began, began + published_s),
            "stolen_most": memory.most_stolen_minute(began, began + published_s),
            # from the first batch sent
            "rss_second_minute": memory.peak_mib(began + 60, began + 120),
            "rss_last_minute": memory.peak_mib(ended - 60, ended + 1)}


def _sessions_split(by_device: dict[str, float], last_sent: dict[str, float], began: float,
                    stopped: float, stolen_share) -> dict:
    """The sessions' lags told apart: those that ended while the stream went on, and
    those still open when publishing stopped at `stopped` (every open device sent in
    its last SESSION_EVERY_S; they all end then); and the count of sessions past 10 s
    by the 10 s of the stream in which they ended, with the share of the CPU stolen in
    the 20 s from then (`stolen_share(since, until)`, `Memory.stolen_share`)."""
    during, at_stop = [], []
    for device, lag in by_device.items():
        (at_stop if last_sent[device] >= stopped - SESSION_EVERY_S else during).append(lag)
    late = collections.Counter(int((last_sent[device] - began) // 10) * 10
                               for device, lag in by_device.items() if lag > 10)
    return {"during": _lag_figures(sorted(during)), "at_stop": _lag_figures(sorted(at_stop)),
            "late_by_end": [(start, count, stolen_share(began + start, began + start + 20))
                            for start, count in sorted(late.items())]}


def _lag_figures(lags: list[float]) -> dict:
    """Median, p95, max of sorted `lags`, the share within 10 s and the count past it."""
    return {"count": len(lags),
            "lag_p50": lags[len(lags) // 2] if lags else None,
            "lag_p95": lags[int(len(lags) * 0.95)] if lags else None,
            "lag_max": lags[-1] if lags else None,
            "within_10s": sum(1 for lag in lags if lag <= 10) / len(lags) if lags else 0,
            "past_10s": sum(1 for lag in lags if lag > 10)}


def _lags_text(figures: dict, what: str) -> str:
    return (f"median {figures['lag_p50']:.1f} s, p95 {figures['lag_p95']:.1f} s, max "
            f"{figures['lag_max']:.1f} s, within 10 s: {figures['within_10s']:.2%} "
            f"({figures['past_10s']:,} {what} later)") if figures["count"] else f"no {what}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=40_000, help="0: no drain")
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=int, default=120, help="0: no steady run")
    parser.add_argument("--sessions", type=int, metavar="GAP_S",
                        help="the steady run in sessions of this gap, not windows")
    parser.add_argument("--sessions_together", action="store_true",
                        help="sessions that start and end in bursts (session_devices)")
    parser.add_argument("--runners", default="DirectRunner,PrismRunner")
    args = parser.parse_args()
    port = free_port()
    pstest = subprocess.Popen([pstest_binary(), "-port", str(port)], stdout=subprocess.PIPE,
                              text=True)
    pstest.stdout.readline()
    os.environ.update(PUBSUB_EMULATOR_HOST=f"127.0.0.1:{port}", AWS_ACCESS_KEY_ID="local",
                      AWS_SECRET_ACCESS_KEY="local", AWS_DEFAULT_REGION="us-east-1")
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.05))
    subscriber = pubsub_v1.SubscriberClient()
    try:
        with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
            tmp = os.environ.get("LIVE_LOGS", tmp)
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            for runner in args.runners.split(","):
                if args.backlog:
                    _print_drain(runner, drain(runner, endpoint, s3, publisher, subscriber,
                                               args.backlog, Path(tmp)))
                if args.seconds:
                    print(f"{runner}: {args.rate:,} batches/s for {args.seconds} s"
                          + (f", sessions of gap {args.sessions} s" if args.sessions else "")
                          + " ...", flush=True)
                    _print_steady(steady(runner, endpoint, s3, publisher, subscriber, args.rate,
                                         args.seconds, Path(tmp), args.sessions,
                                         args.sessions_together))
    finally:
        pstest.terminate()


def _print_drain(runner: str, result: dict) -> None:
    print(f"{runner}: drained {result['batches']:,} batches in {result['seconds']:.1f} s, "
          f"{result['per_s']:,.0f} batches/s, every event in S3: {_complete(result)}; "
          f"{_stolen_text(result['stolen'])} of the machine's CPU stolen by its hypervisor; "
          f"the pipeline stopped {result['stop_s']:.1f} s later", flush=True)
    if result["cpu"]:
        print("  CPU while it drained, cores: " + ", ".join(
            f"{name} {share:.2f}" for name, share in sorted(
                result["cpu"].items(), key=lambda item: -item[1])) +
              f"; all {sum(result['cpu'].values()):.2f} of {psutil.cpu_count()}", flush=True)


def _stolen_text(share: float | None) -> str:
    return "not known how much" if share is None else f"{share:.1%}"


def _print_steady(result: dict) -> None:
    end = "session end (last batch + gap)" if result["sessions"] else "window end"
    lags = (f"{end} to file: {_lags_text(result, 'sessions' if result['sessions'] else 'files')}"
            if result["files"] else "no file")
    sessions = f", {result['sessions']:,} sessions" if result["sessions"] else ""
    memory = "; ".join(
        f"{label} {peaks['all']:,.0f} MiB ("
        + ", ".join(f"{name} {mib:,.0f}" for name, mib in peaks.items() if name != "all") + ")"
        for label, peaks in (("second minute", result["rss_second_minute"]),
                             ("last minute", result["rss_last_minute"])) if peaks)
    print(f"  published {result['published_per_s']:,.0f} batches/s, {result['files']:,} files"
          f"{sessions}, {lags}; every event in S3: {_complete(result)}; peak RSS of the "
          f"pipeline's processes: {memory or 'not sampled'}", flush=True)
    print(f"  the machine's CPU stolen by its hypervisor while publishing: "
          f"{_stolen_text(result['stolen'])}, {_stolen_text(result['stolen_most'])} in its "
          "worst minute", flush=True)
    split = result["sessions_split"]
    if split:
        during, at_stop = split["during"], split["at_stop"]
        print(f"  sessions that ended while the stream went on ({during['count']:,}): "
              f"{_lags_text(during, 'sessions')}; the {at_stop['count']:,} still open "
              f"when publishing stopped, which all ended then: {_lags_text(at_stop, 'sessions')}",
              flush=True)
        late = ", ".join(f"{count:,} in [{start}, {start + 10}) s ({_stolen_text(stolen)})"
                         for start, count, stolen in split["late_by_end"]) or "none"
        print(f"  sessions past 10 s by when they ended, seconds into the stream (the CPU "
              f"stolen in the 20 s from then): {late}", flush=True)
    print(f"  the run's last status: {result['summary']}", flush=True)
    print(f"  file panes by timing, from the run's summary: {result['file_panes']}", flush=True)


if __name__ == "__main__":
    main()
