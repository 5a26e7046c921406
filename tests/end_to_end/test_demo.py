"""The README's quick start as a user runs it: `./run_local.sh stream`, then Ctrl-C
from the terminal (SIGINT to the script's whole process group); and the bounded demo
with Parquet output."""

from __future__ import annotations

import os
import re
import signal
import subprocess

from tests.conftest import ROOT, poll


def test_the_stream_demo_stops_on_ctrl_c_with_its_summary_and_every_event_in_s3(tmp_path):
    log = tmp_path / "stream.log"
    with open(log, "w") as out:
        demo = subprocess.Popen(["./run_local.sh", "stream"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Three status lines that count files: the run forwards, and the screen shows it.
        assert poll(lambda: len(re.findall(r"^live: .* events forwarded in [1-9]",
                                           log.read_text(), re.M)) >= 3, 240), \
            log.read_text()[-3000:]
        os.killpg(demo.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        assert demo.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if demo.poll() is None:  # SIGTERM first: the script's exit trap stops its servers
            os.killpg(demo.pid, signal.SIGTERM)
            try:
                demo.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    summary = text[text.rindex("Run summary:"):]
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in summary
    forwarded = int(re.search(r"^  events_forwarded\s+([\d,]+)$", summary, re.M)
                    .group(1).replace(",", ""))
    # The closing listing of the bucket: every event the summary counts is in S3.
    total = re.search(r"^\s*[\d,]+\s+\d+\s+(\d+)\s+total in \d+ objects$", text, re.M)
    assert total and int(total.group(1)) == forwarded > 0, text[-2000:]
    assert "the forwarder exited 0" in text


def test_the_demo_shows_parquet_output(tmp_path):
    done = subprocess.run(["./run_local.sh", "--output_format=parquet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"\.parquet$", done.stdout, re.M)
    assert re.search(r"total in \d+ objects$", done.stdout, re.M)
