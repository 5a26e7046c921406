"""Packing lines into files within bounds (`transforms.rules.packing`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.rules import packing


@pytest.mark.parametrize(
    "lines, max_items, max_bytes, expected",
    [
        ([b"a", b"b", b"c"], 2, 100, [[b"a", b"b"], [b"c"]]),
        ([b"a", b"b", b"c"], 1, 100, [[b"a"], [b"b"], [b"c"]]),
        ([b"aaaa", b"b", b"c"], 10, 5, [[b"aaaa"], [b"b", b"c"]]),  # 5 bytes: exactly full
        ([b"a", b"toolongforone", b"b"], 10, 4, [[b"a"], [b"toolongforone"], [b"b"]]),
        (["é".encode()], 10, 3, [["é".encode()]]),  # two UTF-8 bytes and the newline
        ([], 10, 10, []),
    ],
)
def test_pack_bounds_files_by_count_and_bytes_never_splitting_a_batch(
    lines, max_items, max_bytes, expected
):
    assert list(packing.pack(lines, packing.line_bytes, max_items, max_bytes)) == expected


@given(st.lists(st.binary(max_size=12), max_size=40), st.integers(1, 6), st.integers(1, 30))
def test_each_file_holds_as_many_lines_in_order_as_its_bounds_let_it(lines, max_items, max_bytes):
    """Files in order hold every line once; each within both bounds (or one line alone
    that is too large for any), and each but the last full: it could not take the next
    line without passing a bound."""
    files = list(packing.pack(lines, packing.line_bytes, max_items, max_bytes))
    assert [line for file in files for line in file] == lines
    size = [sum(len(line) + 1 for line in file) for file in files]
    for n, file in enumerate(files):
        assert file and len(file) <= max_items
        assert size[n] <= max_bytes or len(file) == 1
        if n + 1 < len(files):
            assert len(file) == max_items or size[n] + len(files[n + 1][0]) + 1 > max_bytes
