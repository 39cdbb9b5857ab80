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


def test_a_canary_is_marked_and_a_host_that_degraded_in_the_soak_halted_the_fleet():
    canary = dict(ROWS[0], canary=True, status="degraded", failed_step="soak after batch 1")
    assert _fleet.cells(canary)[1:4] == ("1 (canary)", "v2 -> v1", "DEGRADED in the soak")
    assert _fleet.summary([canary, ROWS[2]]) == (
        "Halted: web1 DEGRADED in the soak at step 'soak after batch 1'. Not started, unchanged: web3."
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


@pytest.mark.parametrize(
    "value, canary, sizes",
    [
        (2, 1, [1, 2, 2]),
        ("50%", 1, [1, 2, 2]),  # half of all five, the canary counted
        (2, 0, [2, 2, 1]),
        ("100%", 2, [2, 3]),
        ([1, "50%"], 1, [1, 1, 2, 1]),
        (1, "5", [5]),
    ],
)
def test_a_canary_goes_first_on_its_own_then_the_batches(value, canary, sizes):
    made = _fleet.plan(FIVE, value, canary)
    assert [len(batch["hosts"]) for batch in made] == sizes
    assert [batch["canary"] for batch in made] == [bool(int(canary))] + [False] * (len(sizes) - 1)
    assert [host for batch in made for host in batch["hosts"]] == FIVE


@pytest.mark.parametrize(
    "canary, words",
    [
        (-1, "rollback_canary -1 is not a number of hosts"),
        ("one", "rollback_canary 'one' is not a number of hosts"),
        (True, "rollback_canary True is not a number of hosts"),
        (6, "rollback_canary 6 is more than the 5 hosts chosen: give at most 5, or 0 for none."),
    ],
)
def test_a_bad_canary_is_named_with_what_to_give(canary, words):
    assert [words in error for error in _fleet.plan_errors(FIVE, 1, canary)] == [True]
    assert _fleet.plan_errors(FIVE, 2, 1) == [] and _fleet.plan_errors(["h1"], 1, "1") == []
    assert len(_fleet.plan_errors(FIVE, 0, "x")) == 2


GROUPS = {"all": FIVE, "ungrouped": [], "workers": ["h4", "h5"], "web": ["h1", "h2", "h3"], "db": ["h3"]}


def test_tiers_roll_back_in_their_order_each_with_its_canary_then_its_batches():
    made = _fleet.plan(FIVE, "50%", 1, ["workers", "web"], GROUPS)
    assert [(b["tier"], b["canary"], b["hosts"]) for b in made] == [
        ("workers", True, ["h4"]),
        ("workers", False, ["h5"]),
        ("web", True, ["h1"]),
        ("web", False, ["h2"]),  # half of web's three hosts, rounded down
        ("web", False, ["h3"]),
    ]
    # A tier none of the chosen hosts is in is left out; a canary larger than a later tier takes it whole.
    assert [b["hosts"] for b in _fleet.plan(["h1", "h4"], 1, 1, ["db", "web", "workers"], GROUPS)] == [["h1"], ["h4"]]
    assert [b["hosts"] for b in _fleet.plan(FIVE, 2, 0)] == [["h1", "h2"], ["h3", "h4"], ["h5"]]


@pytest.mark.parametrize(
    "tiers, canary, words",
    [
        (
            ["workers", "cache"],
            1,
            "rollback_tiers names cache, not a group of the inventory (its groups: db, web, workers).",
        ),
        (["web", "db", "workers"], 1, "Hosts in more than one tier: h3 (web, db); a host rolls back once"),
        (["web"], 1, "Hosts chosen but in no tier: h4, h5; add their group to rollback_tiers"),
        ("web", 1, "rollback_tiers 'web' is not a list of inventory groups"),
        (
            ["workers", "web"],
            3,
            "rollback_canary 3 is more than the 2 hosts of the first tier, workers: give at most 2",
        ),
    ],
)
def test_bad_tiers_are_named_with_what_to_give(tiers, canary, words):
    errors = _fleet.plan_errors(FIVE, 1, canary, tiers, GROUPS)
    assert [words in error for error in errors] == [True], errors
    assert _fleet.plan_errors(FIVE, 1, 2, ["workers", "web"], GROUPS) == []


def test_a_row_shows_its_tier_and_its_canary():
    assert _fleet.cells(dict(ROWS[0], tier="web", canary=True))[1] == "1 (web, canary)"
    assert _fleet.cells(dict(ROWS[0], tier="web"))[1] == "1 (web)"


def host_info(*events, failed=()):
    """A compose_release_info result: releases named by version (id = version * 6), newest first,
    from the deploys and rollbacks given in order."""
    ids = {}
    for _event, version in events:
        ids.setdefault(version, len(ids))
    releases = [
        {"id": version * 6, "version": version, "created": "2026-12-0%dT00:00:00Z" % (index + 1)}
        for version, index in ids.items()
    ]
    return {
        "releases": list(reversed(releases)),
        "history": [{"event": event, "release": version * 6} for event, version in events],
        "failed_deploys": [{"event": "failed_deploy", "release": version * 6} for version in failed],
    }


def test_common_is_the_newest_release_on_every_host_but_what_they_were_deployed_with():
    same = {h: host_info(("deploy", "v1"), ("deploy", "v2"), ("deploy", "v3")) for h in ("web1", "web2")}
    assert _fleet.common_release(same) == ("v2" * 6, None)
    # web2 never got v2 (drift): v1 is the newest both hold.
    drifted = dict(same, web2=host_info(("deploy", "v1"), ("deploy", "v3")))
    assert _fleet.common_release(drifted) == ("v1" * 6, None)
    # web1 already rolled back to v2 by the halted run: still v2, the same target again.
    resumed = dict(same, web1=host_info(("deploy", "v1"), ("deploy", "v2"), ("deploy", "v3"), ("rollback", "v2")))
    assert _fleet.common_release(resumed) == ("v2" * 6, None)
    # A release whose deploy failed on some host is no target anywhere.
    failed = dict(same, web2=host_info(("deploy", "v1"), ("deploy", "v2"), ("deploy", "v3"), failed=["v2"]))
    assert _fleet.common_release(failed) == ("v1" * 6, None)


def test_no_common_release_lists_each_hosts_releases():
    infos = {"web1": host_info(("deploy", "v1"), ("deploy", "v2")), "web2": host_info(("deploy", "v3"))}
    target, error = _fleet.common_release(infos)
    assert target is None
    assert error.startswith("rollback_target common: no release is recorded on every host")
    assert "web1: v2 (v2v2v2v2v2v2), v1 (v1v1v1v1v1v1); web2: v3 (v3v3v3v3v3v3)." in error
