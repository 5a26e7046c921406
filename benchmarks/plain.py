"""The baseline: the forwarder's bulk work in plain Python, importing nothing of the
forwarder or of Beam, written as fast as plain Python goes on this machine.

    python -m benchmarks.plain --input 'in/*.ndjson' --bucket B --endpoint_url URL \\
        [--gzip] [--sessions GAP_S] [--processes N]

Default settings (the two change-event types dropped, the batch's context location
left out, identities in their outbound form), the pipeline's checks of every record
and event, one outbound batch per device and 10-minute arrival window (or session),
its events in time order without repeats, files packed within the default bounds
per app and window, named as mParticle names them, gzip level 6, PUT to S3 from a
thread pool. Written so that its objects equal the pipeline's, key for key and byte
for byte (`benchmarks.run` compares them).

One process by default. `--processes N` (the all-cores job): N processes each read
every line, find its device with a byte scan (no JSON parse), and fully handle only
the lines of their own devices; each checks that the scan named the device the
parse finds, and stops if not (an input this scan does not suit). The outbound
batches come back to the first process, which packs the files across all devices
(as the pipeline does) and gzips and PUTs them in threads, on every core.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import gzip
import hashlib
import json
import multiprocessing
import re
import time
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import boto3
import orjson
from botocore.config import Config

WINDOW_US = 600 * 1_000_000
MAX_BATCHES_PER_FILE = 100_000
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_BATCH_BYTES = 4 * 1024 * 1024
PUT_THREADS = 8
DROPPED_TYPES = frozenset({"user_attribute_change", "user_identity_change"})
EARLIEST_MS, LATEST_MS = 946_684_800_000, 4_102_444_800_000
DEVICE_FIELDS = ("ios_idfv", "android_uuid", "ios_advertising_id", "android_advertising_id",
                 "fire_advertising_id", "roku_advertising_id", "microsoft_advertising_id",
                 "amp_id")
ZERO_ID = "00000000-0000-0000-0000-000000000000"
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MP_DEVICEID = re.compile(rb'"mp_deviceid":"([^"\\]*)"')
MPID = re.compile(rb'"mpid":(-?\d+)[,}]')


def as_int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def plausible(value):
    ms = as_int(value)
    return ms if ms is not None and EARLIEST_MS <= ms < LATEST_MS else None


def device_of(batch: dict):
    mp_deviceid = batch.get("mp_deviceid")
    if isinstance(mp_deviceid, str) and mp_deviceid.strip():
        return f"mp_deviceid:{mp_deviceid}"
    mpid = as_int(batch.get("mpid"))
    if mpid:
        return f"mpid:{mpid}"
    info = batch.get("device_info")
    if isinstance(info, dict):
        for field in DEVICE_FIELDS:
            value = info.get(field)
            if isinstance(value, str) and value.strip() and value != ZERO_ID:
                return f"{field}:{value}"
    return None


def scanned_device(line: bytes):
    """The device a line's bytes name, without parsing it; None if they name none."""
    found = MP_DEVICEID.search(line)
    if found and found.group(1).strip():
        return "mp_deviceid:" + found.group(1).decode()
    found = MPID.search(line)
    if found and int(found.group(1)):
        return f"mpid:{int(found.group(1))}"
    return None


def event_ok(event) -> bool:
    if not isinstance(event, dict) or not isinstance(event.get("event_type"), str):
        return False
    data = event.get("data")
    if data is None:
        return True
    if not isinstance(data, dict):
        return False
    stamp = data.get("timestamp_unixtime_ms")
    return stamp is None or plausible(stamp) is not None


def forwarded(batch: dict) -> dict:
    """The batch with the default settings applied."""
    out = {}
    for key, value in batch.items():
        if key == "events":
            value = [e for e in value if e.get("event_type") not in DROPPED_TYPES]
        elif key == "user_identities" and isinstance(value, dict):
            value = [{"identity_type": k, "identity": v} for k, v in value.items()
                     if v is not None]
        elif key == "context" and isinstance(value, dict) and "location" in value:
            value = {k: v for k, v in value.items() if k != "location"}
        out[key] = value
    return out


def read(patterns: list[str], worker: int, workers: int, counts: dict):
    """(device, arrival_ms, source, app, batch) of each good batch of this worker's."""
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as stream:
                for number, line in enumerate(stream, 1):
                    line = line.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    scanned = scanned_device(line) if workers > 1 else None
                    if workers > 1 and zlib.crc32((scanned or "").encode()) % workers != worker:
                        continue
                    item = parsed(line, f"{path}:{number}", counts)
                    if item is None:
                        continue
                    if workers > 1 and scanned is not None and scanned != item[0]:
                        raise SystemExit(f"{path}:{number}: the byte scan named {scanned}, "
                                         f"the batch is {item[0]}: run with one process")
                    yield item


def parsed(line: bytes, source: str, counts: dict):
    counts["records"] += 1
    if len(line) > MAX_BATCH_BYTES:
        counts["dead"] += 1
        return None
    try:
        batch = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            batch = json.loads(line)  # integers beyond 64 bits, exactly
        except ValueError:
            counts["dead"] += 1
            return None
    events = batch.get("events") if isinstance(batch, dict) else None
    if not isinstance(batch, dict) or (events is not None and not isinstance(events, list)):
        counts["dead"] += 1
        return None
    events = events or []
    good = [e for e in events if event_ok(e)]
    counts["events"] += len(events)
    counts["dead_events"] += len(events) - len(good)
    if len(good) != len(events):
        batch = {k: (good if k == "events" else v) for k, v in batch.items()}
    arrival = plausible(batch.get("timestamp_unixtime_ms"))
    if arrival is None and good:
        arrival = plausible((good[0].get("data") or {}).get("timestamp_unixtime_ms"))
    if arrival is None:
        counts["dead"] += 1
        return None
    device = device_of(batch) or f"no_device:{source}"
    info = batch.get("application_info")
    name = info.get("application_name") if isinstance(info, dict) else None
    app = ((UNSAFE.sub("_", name.strip()).strip("._")[:100] if isinstance(name, str) else "")
           or "unknown_app")
    batch = forwarded(batch)
    if not batch.get("events"):
        return None  # nothing to send (the pipeline's default)
    return device, arrival, source, app, batch


def event_key(event):
    data = event.get("data")
    if not isinstance(data, dict):
        return None, None, None
    event_id = data.get("event_id")
    number = as_int(event_id)
    return (plausible(data.get("timestamp_unixtime_ms")),
            event_id if number is None else number, data.get("source_message_id"))


def merged(batches: list) -> tuple[bytes, int]:
    """One device's batches of one window, sorted by (arrival, source): its outbound
    line and event count."""
    timed = []
    for order, (arrival, _, _, batch) in enumerate(batches):
        for index, event in enumerate(batch["events"]):
            at, event_id, message_id = event_key(event)
            timed.append((arrival if at is None else at, order, index, event_id, message_id,
                          event))
    timed.sort(key=lambda item: item[:3])
    ids, messages, events = set(), set(), []
    for _, _, _, event_id, message_id, event in timed:
        if event_id in ids or message_id in messages:
            continue
        if event_id is not None:
            ids.add(event_id)
        if message_id is not None:
            messages.add(message_id)
        events.append(event)
    latest = batches[-1][3]
    try:
        line = orjson.dumps({**latest, "events": events})
    except TypeError:  # beyond 64 bits
        line = json.dumps({**latest, "events": events}, separators=(",", ":"),
                          ensure_ascii=False).encode()
    return line, len(events)


def groups(items, gap_ms: int | None):
    """(app, file window start) → [(arrival, events, line)] of every outbound batch."""
    per_device = defaultdict(list)
    for device, arrival, source, app, batch in items:
        key = (device, None if gap_ms else arrival * 1000 - arrival * 1000 % WINDOW_US)
        per_device[key].append((arrival, source, app, batch))
    files = defaultdict(list)
    for (_, start), batches in per_device.items():
        batches.sort(key=lambda b: (b[0], b[1]))
        if gap_ms:  # a batch covers [arrival, arrival + gap); overlapping ones merge
            sessions = []  # [batches, end]
            for batch in batches:
                if sessions and batch[0] < sessions[-1][1]:
                    sessions[-1][0].append(batch)
                    sessions[-1][1] = max(sessions[-1][1], batch[0] + gap_ms)
                else:
                    sessions.append([[batch], batch[0] + gap_ms])
            outs = [(session, end * 1000 - 1) for session, end in sessions]
        else:
            outs = [(batches, start + WINDOW_US - 1)]
        for session, at_us in outs:
            line, count = merged(session)
            files[(session[-1][2], at_us - at_us % WINDOW_US)].append(
                (session[-1][0], count, line))
    return files


def pack(entries):
    chunk, size = [], 0
    for entry in sorted(entries):
        if chunk and (len(chunk) >= MAX_BATCHES_PER_FILE
                      or size + len(entry[2]) + 1 > MAX_FILE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += len(entry[2]) + 1
    if chunk:
        yield chunk


def put(client, bucket: str, app: str, chunk, compress: bool) -> tuple[int, int]:
    body = b"\n".join(line for _, _, line in chunk) + b"\n"
    if compress:
        body = gzip.compress(body, compresslevel=6, mtime=0)
    sha = hashlib.sha256(body).hexdigest()
    newest = max(arrival for arrival, _, _ in chunk)
    stamp = (EPOCH + datetime.timedelta(milliseconds=newest)).strftime("%Y%m%d%H%M%S%f")
    digits = int(sha[:12], 16) % 100_000
    key = f"{app}_{stamp}_{digits:05d}.txt" + (".gz" if compress else "")
    client.put_object(Bucket=bucket, Key=key, Body=body)
    return len(body), sum(events for _, events, _ in chunk)


def collect(patterns, gap_s, worker=0, workers=1) -> tuple[dict, dict]:
    """(counts, files) of the lines of this worker's devices."""
    counts = defaultdict(int)
    files = groups(read(patterns, worker, workers, counts), gap_s * 1000 if gap_s else None)
    return dict(counts), files


def write(files: dict, bucket: str, endpoint_url: str, compress: bool) -> dict:
    """Packs each (app, window)'s outbound batches into files, gzips and PUTs them in a
    thread pool (zlib lets go of the GIL: the compression takes every core)."""
    client = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                          config=Config(max_pool_connections=PUT_THREADS))
    with ThreadPoolExecutor(PUT_THREADS) as pool:
        written = list(pool.map(lambda job: put(client, bucket, *job, compress),
                                ((app, chunk) for (app, _), entries in files.items()
                                 for chunk in pack(entries))))
    return {"files": len(written), "bytes": sum(b for b, _ in written),
            "events_forwarded": sum(e for _, e in written)}


def _collect(args):
    return collect(*args)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", action="append", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--endpoint_url", required=True)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--sessions", type=int, default=0, metavar="GAP_S")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.processes == 1:
        parts = [collect(args.input, args.sessions)]
    else:  # each worker its devices; the files are packed across them, as the pipeline's
        with multiprocessing.get_context("fork").Pool(args.processes) as pool:
            parts = pool.map(_collect, [(args.input, args.sessions, worker, args.processes)
                                        for worker in range(args.processes)])
    total, files = defaultdict(int), defaultdict(list)
    for counts, found in parts:
        for name, value in counts.items():
            total[name] += value
        for group, entries in found.items():
            files[group] += entries
    total.update(write(files, args.bucket, args.endpoint_url, args.gzip))
    print(json.dumps({**total, "seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    main()
