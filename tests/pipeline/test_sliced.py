"""Sliced runs (`pipeline.sliced`): a spill without the disk it needs is refused."""

from __future__ import annotations

import os

import pytest


def test_a_spill_without_the_disk_it_needs_is_refused(tmp_path):
    from pipeline.config import ConfigError
    from pipeline.sliced import spill_directory

    with pytest.raises(ConfigError, match="Give a --spill_dir with more space"):
        with spill_directory(str(tmp_path), needed_bytes=1 << 60):
            pass
    assert os.listdir(tmp_path) == []


