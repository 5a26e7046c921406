"""The spill's files (`transforms.machinery.spill_files`): what a bundle appends reads back in
order, nothing shows before the bundle commits, a cut file is an error, and a
bundle's buffers stay under their cap."""

from __future__ import annotations

import os

import pytest

from transforms.machinery import spill_files
from transforms.machinery.shuffled import ShuffledBatch
from transforms.machinery.spill_files import (
    BATCH_CODER,
    SUFFIX,
    BundleFiles,
    batch_folder,
    read_frames,
    shard_slices,
    slice_start_s,
)
from transforms.machinery.spill_files import (
    spill_files as files_in,
)

SLICE_S = 7200
BOUNDARY_MS = 1_700_006_400_000  # 2023-11-15T00:00:00Z, a slice boundary


def test_spill_frames_read_back_and_a_cut_file_is_an_error(tmp_path):
    items = [(f"mpid:{n}",
              ShuffledBatch(BOUNDARY_MS + n * 3_600_000, f"f:{n}", "App", n, b"\x00" * n))
             for n in range(5)]
    bundle = BundleFiles(BATCH_CODER)
    for n, item in enumerate(items):
        bundle.add(batch_folder(str(tmp_path), n % 2, slice_start_s(item[1].arrival_ms, SLICE_S)),
                   item)
    assert list(tmp_path.rglob("*" + SUFFIX)) == []  # nothing visible before the bundle commits
    bundle.commit()
    read = {}
    for shard in (0, 1):
        starts = shard_slices(str(tmp_path), shard)
        assert starts == sorted(starts) and starts
        for start in starts:
            for path in files_in(batch_folder(str(tmp_path), shard, start)):
                read.update((frame, start) for frame in read_frames(path))
    assert sorted(read) == sorted(items)
    # 2-hour slices, UTC-aligned: 00:00, 00:00, 02:00, 02:00, 04:00.
    assert [read[item] for item in items] == [1_700_006_400] * 2 + [1_700_013_600] * 2 + [
        1_700_020_800]
    path = next(iter(tmp_path.rglob("*" + SUFFIX)))
    with open(path, "r+b") as cut:
        cut.truncate(os.path.getsize(path) - 1)
    with pytest.raises(EOFError, match="spill file ends inside a block"):
        list(read_frames(path))


def test_spill_buffers_stay_under_their_cap_and_every_frame_reads_back_in_order(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(spill_files, "_FLUSH_BYTES", 8 << 10)
    monkeypatch.setattr(spill_files, "_BUFFERED_BYTES", 32 << 10)
    files = BundleFiles(spill_files.LINE_CODER)
    written: dict[str, list] = {}
    for n in range(3000):
        # One busy folder and many quiet ones, as time-ordered archives give.
        folder = str(tmp_path / ("busy" if n % 2 else f"quiet-{n % 97}"))
        element = (("App", "", n % 3, n), (n, 1, os.urandom(n % 200)))
        files.add(folder, element)
        written.setdefault(folder, []).append(element)
        assert files._buffered <= (32 << 10) + 300
    files.commit()
    for folder, elements in written.items():
        [path] = files_in(folder)
        assert list(read_frames(path, spill_files.LINE_CODER)) == elements


def test_a_block_that_cannot_be_appended_fails_the_bundle_and_shows_nothing(tmp_path):
    """Blocks are compressed and appended in a thread of their own: an error there (here
    a directory where the bundle's file would be) is raised by the bundle's commit, and
    no file of the bundle becomes visible."""
    bundle = BundleFiles(BATCH_CODER)
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / (bundle._name + ".part")).mkdir()
    bundle.add(str(folder), ("mpid:1", ShuffledBatch(BOUNDARY_MS, "f:1", "App", 1, b"{}")))
    with pytest.raises(IsADirectoryError):
        bundle.commit()
    assert list(tmp_path.rglob("*" + SUFFIX)) == []
