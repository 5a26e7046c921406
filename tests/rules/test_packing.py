"""Packing lines into files within bounds (`transforms.rules.packing`)."""

from __future__ import annotations

import pytest

from transforms.rules import packing


@pytest.mark.parametrize(
    "lines, max_items, max_bytes, expected",
    [
        (["a", "b", "c"], 2, 100, [["a", "b"], ["c"]]),
        (["a", "b", "c"], 1, 100, [["a"], ["b"], ["c"]]),
        (["aaaa", "b", "c"], 10, 5, [["aaaa"], ["b", "c"]]),
        (["a", "toolongforone", "b"], 10, 4, [["a"], ["toolongforone"], ["b"]]),
        (["é"], 10, 3, [["é"]]),  # two UTF-8 bytes plus newline fits 3 bytes
        ([], 10, 10, []),
    ],
)
def test_pack_bounds_files_by_count_and_bytes_never_splitting_a_batch(
    lines, max_items, max_bytes, expected
):
    assert list(packing.pack(lines, packing.line_bytes, max_items, max_bytes)) == expected


