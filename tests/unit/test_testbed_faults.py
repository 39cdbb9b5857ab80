"""The fault matrix's records (tests/testbed/faults.py) and its page and check (scripts/reliability.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))

import faults

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reliability.py"
spec = importlib.util.spec_from_file_location("reliability", SCRIPT)
reliability = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reliability)


def case(**params):
    return faults.FaultCase(
        "tests/integration/test_x.py::test_y[a]",
        "a {how} archive",
        where="volume_backup {state}",
        expected=faults.REFUSED,
        params=params,
    )


def test_a_case_takes_its_parameters_into_what_and_where_and_shortens_what_it_observed():
    recorded = case(how="truncated", state="restore")
    recorded.observed(
        "archive /tmp/pytest-of-root/pytest-62/popen-gw1/test_damaged0/x.tar.zst: sha256 %s\nsecond line" % ("ab" * 32)
    )
    recorded.observed("")
    result = recorded.result(passed=True, seconds=1.26)
    assert (result["what"], result["where"]) == ("a truncated archive", "volume_backup restore")
    assert result["observed"] == ["archive <tmp>/x.tar.zst: sha256 %s..." % ("ab" * 6)]
    assert result["command"] == "make integration TESTS='tests/integration/test_x.py::test_y[a]'"
    assert result["rows_acknowledged"] is None and result["seconds"] == 1.3


def test_an_outcome_that_is_not_one_of_the_three_is_refused():
    with pytest.raises(ValueError, match="is not one of"):
        faults.FaultCase("t", "w", where="x", expected="it works")


def test_rows_add_up_over_the_writers_of_the_running_case_only():
    faults.rows_seen(10, 0)  # no case running: nothing to add to
    recorded = case(how="x", state="y")
    faults.current = recorded
    try:
        faults.rows_seen(120, 0)
        faults.rows_seen(30, 2)
    finally:
        faults.current = None
    assert (recorded.rows_acknowledged, recorded.rows_lost) == (150, 2)


def results(count, **changes):
    rows = []
    for number in range(count):
        recorded = case(how=str(number), state="restore")
        rows.append(dict(recorded.result(passed=True, seconds=1.0), commit="abc1234", **changes))
    return rows


def test_the_check_wants_thirty_cases_all_passed_and_no_row_lost():
    assert reliability.problems(results(30)) == []
    assert reliability.problems(results(29)) == ["29 fault cases recorded, at least 30 wanted"]
    failing = results(30)
    failing[3]["passed"] = False
    failing[4].update(rows_acknowledged=100, rows_lost=1)
    assert reliability.problems(failing) == [
        "%s did not pass" % failing[3]["test"],
        "%s lost 1 rows" % failing[4]["test"],
    ]


def test_the_page_has_a_row_per_case_with_its_rows_and_says_the_totals(tmp_path):
    rows = results(2)
    rows[0].update(rows_acknowledged=500, rows_lost=0, observed=["refused | nothing changed"])
    page = reliability.render(rows)
    assert "**2 cases, 2 passed**" in page and "**Rows lost: 0** of 500 rows" in page
    assert (
        "| 1 | a 0 archive | volume_backup restore | a clear error, nothing changed "
        "| refused \\| nothing changed | yes | 0 of 500 |" in page
    )
    assert "| 2 | a 1 archive |" in page and "as expected (the test's assertions held) | yes | - |" in page
    for row in rows:
        (tmp_path / (row["what"] + ".json")).write_text(json.dumps(row))
    assert [r["what"] for r in faults.load(tmp_path)] == ["a 0 archive", "a 1 archive"]
