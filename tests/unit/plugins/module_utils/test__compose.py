"""Unit tests of the compose wrapper's parsing (both `ps --format json` formats)."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _compose

ENTRY_A = {"Service": "app", "State": "running", "Health": "healthy"}
ENTRY_B = {"Service": "db", "State": "exited", "ExitCode": 1}
LINE_A = '{"Service": "app", "State": "running", "Health": "healthy"}'
LINE_B = '{"Service": "db", "State": "exited", "ExitCode": 1}'

PS_CASES = [
    ("", []),
    ("  \n", []),
    # Compose < 2.21: one JSON array
    ('[{"Service": "app", "State": "running", "Health": "healthy"}]', [ENTRY_A]),
    ("[]", []),
    # Compose >= 2.21: one object per line
    (
        LINE_A + "\n" + LINE_B + "\n",
        [ENTRY_A, ENTRY_B],
    ),
    ('{"Service": "app", "State": "running", "Health": "healthy"}', [ENTRY_A]),
    # Blank lines between objects
    (
        "\n" + LINE_A + "\n\n" + LINE_B,
        [ENTRY_A, ENTRY_B],
    ),
]


@pytest.mark.parametrize(("text", "expected"), PS_CASES)
def test_parse_ps_output_reads_both_formats(text, expected):
    assert _compose.parse_ps_output(text) == expected


def test_parse_ps_output_names_the_bad_line():
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        _compose.parse_ps_output('{"Service": "app"}\nnot json')


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Docker Compose version v2.26.1-4", (2, 26, 1)),
        ("2.18.0", (2, 18, 0)),
        ("docker-compose version 1.29.2, build unknown", (1, 29, 2)),
        ("garbage", None),
    ],
)
def test_parse_version(text, expected):
    assert _compose.parse_version(text) == expected
