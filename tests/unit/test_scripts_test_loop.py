"""The test loop's own scripts: scripts/integration (its parts and subsets) and scripts/run-phases
(phases side by side), run for real against a fake pytest and a throwaway Makefile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

FAKE_PYTEST = """\
import sys
# Exit with the code the test asks for this part (-m "... serial ..." or not), and log the call.
args = sys.argv[1:]
mark = args[args.index("-m") + 1]
part = "parallel" if "not serial" in mark else "serial"
with open(sys.argv[0] + ".calls", "a") as log:
    log.write(part + " " + " ".join(args) + "\\n")
sys.exit(int({codes!r}[part]))
"""


def run_integration(tmp_path, codes, *args, **env):
    fake = tmp_path / "fake_pytest.py"
    fake.write_text(FAKE_PYTEST.format(codes=codes))
    # The developer's own subset and tuning variables must not leak into the test.
    base = {k: v for k, v in os.environ.items() if k not in ("K", "TESTS", "INTEGRATION_WORKERS", "DURATIONS")}
    result = subprocess.run(
        ["bash", str(SCRIPTS / "integration"), *args],
        env=dict(base, PYTEST="%s %s" % (sys.executable, fake), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = (tmp_path / "fake_pytest.py.calls").read_text().splitlines()
    return result, calls


def test_both_parts_run_even_when_the_first_fails(tmp_path):
    result, calls = run_integration(tmp_path, {"parallel": 1, "serial": 0})
    assert result.returncode == 1
    assert [c.split()[0] for c in calls] == ["parallel", "serial"]
    assert "-n 2 --dist loadgroup" in calls[0] and "-n" not in calls[1].split()


def test_a_subset_that_one_part_does_not_reach_passes(tmp_path):
    result, calls = run_integration(tmp_path, {"parallel": 0, "serial": 5}, K="named_release")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all("-k named_release" in c for c in calls)
    assert "the serial part selected no test" in result.stdout


def test_a_subset_that_selects_nothing_fails(tmp_path):
    result, _calls = run_integration(tmp_path, {"parallel": 5, "serial": 5}, K="no_such_test")
    assert result.returncode == 1
    assert "no test selected (K='no_such_test'" in result.stderr


@pytest.mark.parametrize(("part", "expected"), [("parallel", ["parallel"]), ("serial", ["serial"])])
def test_one_part_alone_and_a_mark(tmp_path, part, expected):
    result, calls = run_integration(tmp_path, {"parallel": 0, "serial": 0}, "--part", part, "-m", "smoke")
    assert result.returncode == 0
    assert [c.split()[0] for c in calls] == expected
    assert "and smoke" in calls[0]


PHASES = """\
fast:
\t@echo fast-ran
slow:
\t@sleep 1; echo slow-ran
broken:
\t@echo broken-ran; false
after:
\t@echo after-ran
"""


def run_phases(tmp_path, *args):
    (tmp_path / "Makefile").write_text(PHASES)
    return subprocess.run(
        ["bash", str(SCRIPTS / "run-phases"), *args],
        cwd=tmp_path,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_phases_side_by_side_all_run_and_a_failure_is_summed_up(tmp_path):
    result = run_phases(tmp_path, "fast", "--", "slow+broken,fast", "after")
    assert result.returncode == 1
    out = result.stdout
    # Each phase's log is printed whole, under its own heading.
    for phase in ("slow", "broken", "fast"):
        assert "==== %s (ran beside other phases) ====\n%s-ran" % (phase, phase) in out, out
    # broken's chain went on to fast; the step after the side-by-side one ran too.
    assert out.index("==== broken (ran beside") < out.index("==== fast (ran beside")
    assert "==== after ====\nafter-ran" in out
    summary = out[out.index("==== summary") :]
    assert "side by side:" in summary and "slow | broken,fast" in summary
    assert [line.split()[:2] for line in summary.splitlines()[2:] if not line.startswith("side")] == [
        ["slow", "ok"],
        ["broken", "FAIL"],
        ["fast", "ok"],
        ["after", "ok"],
    ]
    assert "==== broken failed: its last lines" in out


def test_a_failed_setup_phase_stops_the_run(tmp_path):
    result = run_phases(tmp_path, "broken", "--", "after")
    assert result.returncode == 1
    assert "after-ran" not in result.stdout
    assert "setup phase 'broken' failed" in result.stderr
