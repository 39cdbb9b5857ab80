"""The fault matrix: each integration test marked `fault` is one real fault or bad input, with the
outcome it must end in. Its `fault_case` fixture records what happened into one results file per
test (tests/output/reliability/), and `scripts/reliability` turns the last run's files into
docs/reliability.md.

    @pytest.mark.fault("a damaged backup archive ({how})", where="volume_backup restore",
                       expected=faults.REFUSED)
    def test_x(fault_case, how): ...
        fault_case.observed(result["msg"])      # what the collection said, first line kept

`{name}` in `what` and `where` takes the test's parameter of that name. Rows: every
`writer.rows_written_throughout` block in the test adds its acknowledged and lost rows to the case.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(os.environ.get("RELIABILITY_RESULTS", REPO_ROOT / "tests" / "output" / "reliability"))

# The outcomes a fault may end in (the two, and the rollback's own way back).
REFUSED = "a clear error, nothing changed"
REVERTED = "the rollback fails, puts the host back as it was and says so"
CONVERGES = "the next run converges"
OUTCOMES = (REFUSED, REVERTED, CONVERGES)

TMP_PATH = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/(popen-gw\d+/)?[^/\s]+/")
DIGEST = re.compile(r"\b[0-9a-f]{40,64}\b")

# The case of the test running in this process (one test at a time per pytest worker).
current = None


class FaultCase:
    def __init__(self, nodeid, what, where, expected, params=None):
        if expected not in OUTCOMES:
            raise ValueError("fault %s: expected outcome %r is not one of %s" % (nodeid, expected, OUTCOMES))
        params = dict(params or {})
        self.nodeid = nodeid
        self.what = what.format(**params)
        self.where = where.format(**params)
        self.expected = expected
        self.notes = []
        self.rows_acknowledged = None
        self.rows_lost = None

    def observed(self, text):
        """What the collection answered (an error's first line, a report line); kept in order, with
        the test's temporary paths and long digests shortened."""
        line = str(text).strip().splitlines()[0] if str(text).strip() else ""
        line = TMP_PATH.sub("<tmp>/", line)
        line = DIGEST.sub(lambda m: m.group(0)[:12] + "...", line)
        if line:
            self.notes.append(line if len(line) <= 400 else line[:397] + "...")

    def add_rows(self, acknowledged, lost):
        self.rows_acknowledged = (self.rows_acknowledged or 0) + acknowledged
        self.rows_lost = (self.rows_lost or 0) + lost

    def command(self):
        return "make integration TESTS='%s'" % self.nodeid

    def result(self, passed, seconds):
        return {
            "test": self.nodeid,
            "what": self.what,
            "where": self.where,
            "expected": self.expected,
            "passed": passed,
            "observed": self.notes,
            "rows_acknowledged": self.rows_acknowledged,
            "rows_lost": self.rows_lost,
            "command": self.command(),
            "seconds": round(seconds, 1),
            "commit": commit(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def write(self, passed, seconds):
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.nodeid.split("/")[-1])[:200] + ".json"
        tmp = RESULTS_DIR / (name + ".tmp")
        tmp.write_text(json.dumps(self.result(passed, seconds), indent=1) + "\n")
        tmp.replace(RESULTS_DIR / name)


@functools.lru_cache(maxsize=None)
def commit():
    """The commit the suite runs, "+changes" when the work tree differs from it."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()

    try:
        head, dirty = git("rev-parse", "--short=7", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def said(output, *words):
    """What a playbook's output says with all of words: the msg of its last failed task that does,
    else the first line that does (a debug message's text from its value on); "" when none."""
    lines = [line for line in output.splitlines() if all(word in line for word in words)]
    for line in reversed(lines):
        head, sep, body = line.partition(" => ")
        if sep and head.startswith(("fatal:", "failed:")):
            try:
                return json.loads(body)["msg"]
            except (ValueError, KeyError, TypeError):
                pass
    if not lines:
        return ""
    text = lines[0].strip().split("Module failed: ", 1)[-1]
    return re.sub(r'^"msg": ', "", text).strip('"')


def rows_seen(acknowledged, lost):
    """Called by the row writer when its block ends: the rows count for the running case."""
    if current is not None:
        current.add_rows(acknowledged, lost)


def load(directory=RESULTS_DIR):
    results = []
    for path in sorted(Path(directory).glob("*.json")):
        results.append(json.loads(path.read_text()))
    return sorted(results, key=lambda r: (r["where"], r["test"]))
