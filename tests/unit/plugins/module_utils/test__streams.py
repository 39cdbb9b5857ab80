"""Unit tests of the stream helpers: chunk joining and the prefetching thread."""

from __future__ import annotations

import threading

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _streams


@pytest.mark.parametrize(
    ("pieces", "size", "expected"),
    [
        ([], 4, []),
        ([b"ab", b"c", b"def", b"g"], 4, [b"abcdef", b"g"]),
        ([b"abcd", b"e"], 4, [b"abcd", b"e"]),
        ([b"a", b"bcdefg", b"h"], 4, [b"a", b"bcdefg", b"h"]),  # a large piece goes on as it is
    ],
)
def test_coalesce_joins_small_pieces(pieces, size, expected):
    assert list(_streams.coalesce(pieces, size)) == expected


def test_prefetched_yields_everything_in_order():
    assert list(_streams.prefetched(iter(range(100)), depth=3)) == list(range(100))


def test_prefetched_raises_the_sources_error_where_the_consumer_reads():
    def source():
        yield 1
        raise ValueError("refusing member './x'")

    seen = []
    with pytest.raises(ValueError, match="refusing member"):
        for item in _streams.prefetched(source()):
            seen.append(item)
    assert seen == [1]


def test_a_consumer_that_stops_early_stops_the_source():
    made = []

    def source():
        for n in range(10_000):
            made.append(n)
            yield n

    stream = _streams.prefetched(source(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert len(made) < 10 and threading.active_count() < 50
