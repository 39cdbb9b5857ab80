"""The fleet's settings and report, pure: batch sizes as Ansible's serial reads them, the table."""

from __future__ import annotations

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _fleet

GOOD_BATCHES = [1, 2, "3", "50%", "100%", [1, "50%", "100%"], ["1", 2]]
BAD_BATCHES = [
    (0, ["0"]),
    ("0", ["'0'"]),
    ("150%", ["'150%'"]),
    ("0%", ["'0%'"]),
    ("abc", ["'abc'"]),
    (-1, ["-1"]),
    (1.5, ["1.5"]),
    (True, ["True"]),
    ([1, "abc", 0], ["'abc'", "0"]),
    ([], ["empty list"]),
]


@pytest.mark.parametrize("value", GOOD_BATCHES)
def test_batch_sizes_ansible_reads_pass(value):
    assert _fleet.batch_errors(value) == []


@pytest.mark.parametrize("value, named", BAD_BATCHES)
def test_a_bad_batch_size_is_named_with_what_to_give(value, named):
    errors = _fleet.batch_errors(value)
    assert len(errors) == len(named)
    for error, name in zip(errors, named):
        assert name in error and "give" in error


ROWS = [
    {
        "host": "web1",
        "batch": 1,
        "status": "rolled_back",
        "from": "bbbbbbbbbbbbbbbb",
        "from_version": "v2",
        "to": "aaaaaaaaaaaaaaaa",
        "to_version": "v1",
        "downtime_seconds": 0.8123,
        "backups": ["/b/1.tar.gz", "/b/2.tar.gz"],
    },
    {
        "host": "web-two",
        "batch": 2,
        "status": "reverted",
        "from": "cccccccccccccccc",
        "from_version": "",
        "to": "dddddddddddddddd",
        "to_version": None,
        "downtime_seconds": 3.0,
        "backups": ["/b/3.tar.gz"],
        "failed_step": "verify",
        "reason": "service app | unhealthy",
    },
    {"host": "web3", "batch": 2, "status": "not_started"},
    {"host": "web4", "status": "unreachable", "failed_step": "start"},
]


def test_the_table_is_aligned_and_says_who_is_where():
    lines = _fleet.text_table(ROWS).splitlines()
    assert lines[0].split() == [
        "host",
        "batch",
        "from",
        "->",
        "to",
        "status",
        "down",
        "(s)",
        "backups",
        "failed",
        "step",
    ]
    assert lines[1].split() == ["web1", "1", "v2", "->", "v1", "rolled", "back", "0.812", "2", "-"]
    # No version recorded: the release id, shortened; a failed host's downtime is not the rollback's.
    assert lines[2].split() == [
        "web-two",
        "2",
        "cccccccccccc",
        "->",
        "dddddddddddd",
        "FAILED,",
        "put",
        "back",
        "-",
        "1",
        "verify",
    ]
    assert lines[3].split() == ["web3", "2", "-", "not", "started", "-", "-", "-"]
    # Every column starts at the same place on every line.
    header = lines[0]
    for column, cell_of_each_row in (
        ("batch", ["1", "2", "2"]),
        ("status", ["rolled back", "FAILED, put back", "not started"]),
    ):
        start = header.index(column)
        assert [line[start:].split("  ")[0] for line in lines[1:4]] == cell_of_each_row


def test_the_summary_names_the_failure_the_hosts_on_target_and_those_not_started():
    text = _fleet.summary(ROWS)
    assert "web-two FAILED, put back at step 'verify'" in text and "web4 UNREACHABLE at step 'start'" in text
    assert "On their target: web1." in text and "Not started, unchanged: web3." in text
    assert _fleet.summary(ROWS[:1]) == "Every host is on its target (1 host)."
    planned = [dict(ROWS[0], status="planned"), dict(ROWS[2], status="refused", failed_step="preflight")]
    assert _fleet.summary(planned[:1], check_mode=True) == "Check mode: nothing was changed on any host."
    assert _fleet.summary(planned, check_mode=True) == (
        "Check mode: nothing was changed on any host. Would fail: web3 refused, unchanged at step 'preflight'."
    )


def test_hosts_put_back_after_a_halt_show_the_way_back_and_both_downtimes():
    put_back = dict(ROWS[0], status="put_back", put_back_downtime_seconds=1.2)
    not_back = dict(
        ROWS[0], host="web5", status="put_back_failed", failed_step="put back: verify", reason="v2 did not answer"
    )
    rows = [put_back, ROWS[1], not_back, ROWS[2]]
    cells = _fleet.cells(put_back)
    # v2 -> v1 and back to v2; down for the rollback and for the way back.
    assert cells[2:5] == ("v2 -> v1 -> v2", "rolled back, then put back", "2.012")
    assert _fleet.cells(not_back)[2:5] == ("v2 -> v1", "FAILED to go back", "-")
    assert _fleet.cells(dict(put_back, put_back_downtime_seconds=None))[4] == "-"
    assert _fleet.summary(rows) == (
        "Halted: web-two FAILED, put back at step 'verify'. Put back on what they ran: web1. "
        "Could not go back: web5 FAILED to go back at step 'put back: verify'. Not started, unchanged: web3."
    )


def test_markdown_holds_the_same_cells_and_the_reasons():
    document = _fleet.report(ROWS, "recreate", markdown=True)
    assert document.startswith("# Fleet rollback (recreate)\n")
    table = [line for line in document.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(ROWS)
    for row, line in zip(ROWS, table[2:]):
        assert [cell.strip() for cell in line.strip("|").split(" | ")] == list(_fleet.cells(row))
    assert "- **web-two**: service app | unhealthy" in document
    assert _fleet.summary(ROWS) in document
    assert _fleet.report(ROWS, "recreate") == _fleet.text_table(ROWS) + "\n" + _fleet.summary(ROWS)


FIVE = ["h1", "h2", "h3", "h4", "h5"]


@pytest.mark.parametrize(
    "value, sizes",
    [
        (1, [1, 1, 1, 1, 1]),
        (2, [2, 2, 1]),
        ("2", [2, 2, 1]),
        ("50%", [2, 2, 1]),  # 2.5 rounded down, as Ansible does
        ("10%", [1, 1, 1, 1, 1]),  # never less than one host
        ("100%", [5]),
        (9, [5]),
        ([1, "50%"], [1, 2, 2]),
        ([1, 2, "100%"], [1, 2, 2]),
    ],
)
def test_batches_are_made_as_ansibles_serial_makes_them(value, sizes):
    made = _fleet.batches(FIVE, value)
    assert [len(batch) for batch in made] == sizes
    assert [host for batch in made for host in batch] == FIVE
    assert _fleet.batches([], value) == []
