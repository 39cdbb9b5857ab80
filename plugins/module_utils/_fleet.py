# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A fleet rollback's settings checked and its report laid out, pure (playbooks/fleet.yml uses
them through the filter stackops.rollback.fleet).

A report row is one host's outcome: `host`, `batch` (1, 2, ... in the order the batches ran; none
for a host no batch started), `status`, `from`/`from_version`, `to`/`to_version`,
`downtime_seconds`, `backups` (a list), `failed_step` and `reason`.
"""

from __future__ import annotations

import re

# What each status means to an operator reading the table.
STATUS_WORDS = {
    "rolled_back": "rolled back",
    "already_on_target": "already on target",
    "planned": "would roll back",
    "reverted": "FAILED, put back",
    "failed": "FAILED",
    "refused": "refused, unchanged",
    "unreachable": "UNREACHABLE",
    "not_started": "not started",
    "put_back": "rolled back, then put back",
    "put_back_failed": "FAILED to go back",
}
FAILED = ("reverted", "failed", "refused", "unreachable")
DONE = ("rolled_back", "already_on_target")
# After a halt with rollback_on_halt revert: the hosts rolled back went back to what they ran.
PUT_BACK = "put_back"
PUT_BACK_FAILED = "put_back_failed"

COLUMNS = ("host", "batch", "from -> to", "status", "down (s)", "backups", "failed step")
_BATCH = re.compile(r"^[1-9][0-9]*%?$")


def batch_errors(value):
    """What is wrong with a rollback_batch value (Ansible's `serial`: a number, a percentage such
    as "50%", or a list of those for growing batches); an empty list when nothing is."""
    items = value if isinstance(value, list) else [value]
    if not items:
        return ['rollback_batch is an empty list: give a number (2), a percentage ("50%") or a list of those']
    errors = []
    for item in items:
        text = str(item).strip()
        if isinstance(item, bool) or not _BATCH.match(text) or (text.endswith("%") and int(text[:-1]) > 100):
            errors.append(
                "rollback_batch %r is not a batch size: give a whole number of hosts from 1 (2), a "
                'percentage of the hosts from 1%% to 100%% ("50%%") or a list of those ([1, "50%%"]).' % (item,)
            )
    return errors


def _size(item, total):
    """One batch size as Ansible's `serial` reads it: a percentage of all the hosts rounded down,
    at least 1, or a number."""
    text = str(item).strip()
    if text.endswith("%"):
        return max(int(int(text[:-1]) / 100.0 * total), 1)
    return int(text)


def batches(hosts, value):
    """The hosts in batches, in order, as Ansible's `serial` would make them: each size of a list in
    turn, the last one repeated (batch_errors must have passed)."""
    sizes = value if isinstance(value, list) else [value]
    left, total, made = list(hosts), len(hosts), []
    while left:
        size = _size(sizes[min(len(made), len(sizes) - 1)], total)
        made.append(left[:size])
        left = left[size:]
    return made


def _release(row):
    def name(which):
        version, release = row.get(which + "_version"), row.get(which)
        return str(version or (release or "-")[:12])

    if not row.get("from") and not row.get("to"):
        return "-"
    back = " -> %s" % name("from") if row.get("status") == PUT_BACK else ""
    return "%s -> %s%s" % (name("from"), name("to"), back)


def _downtime(row):
    """Seconds the host's service was down in this run: the rollback's, and the way back's after a
    halt (rollback_on_halt revert); None when it did not finish."""
    status = row.get("status", "not_started")
    parts = [row.get("downtime_seconds")] + ([row.get("put_back_downtime_seconds")] if status == PUT_BACK else [])
    if status not in (*DONE, PUT_BACK) or any(part in (None, "") for part in parts):
        return None
    return sum(float(part) for part in parts)


def cells(row):
    """The row's values as the table shows them, in COLUMNS order."""
    downtime = _downtime(row)
    status = row.get("status", "not_started")
    return (
        str(row.get("host", "?")),
        str(row.get("batch") or "-"),
        _release(row),
        STATUS_WORDS.get(status, status),
        "-" if downtime is None else "%.3f" % downtime,
        str(len(row["backups"])) if row.get("backups") is not None else "-",
        str(row.get("failed_step") or "-"),
    )


def text_table(rows):
    """An aligned table of the rows, with a header line: what the playbook prints."""
    lines = [COLUMNS] + [cells(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def markdown_table(rows):
    """The same table in Markdown (pipes in values escaped)."""

    def line(values):
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(COLUMNS), "|" + "---|" * len(COLUMNS)] + [line(cells(row)) for row in rows])


def summary(rows, check_mode=False):
    """One sentence: how the fleet ended, who failed and why, who was left where."""
    failed = [r for r in rows if r.get("status") in FAILED]
    done = [r["host"] for r in rows if r.get("status") in DONE]
    put_back = [r["host"] for r in rows if r.get("status") == PUT_BACK]
    not_back = [r for r in rows if r.get("status") == PUT_BACK_FAILED]
    untouched = [r["host"] for r in rows if r.get("status", "not_started") == "not_started"]
    if check_mode:
        return "Check mode: nothing was changed on any host." + (
            " Would fail: %s." % "; ".join(_failures(failed)) if failed else ""
        )
    if not failed:
        return "Every host is on its target (%d host%s)." % (len(done), "" if len(done) == 1 else "s")
    parts = ["Halted: %s." % "; ".join(_failures(failed))]
    if put_back:
        parts.append("Put back on what they ran: %s." % ", ".join(put_back))
    if not_back:
        parts.append("Could not go back: %s." % "; ".join(_failures(not_back)))
    if done:
        parts.append("On their target: %s." % ", ".join(done))
    if untouched:
        parts.append("Not started, unchanged: %s." % ", ".join(untouched))
    return " ".join(parts)


def _failures(failed):
    return [
        "%s %s%s"
        % (r["host"], STATUS_WORDS[r["status"]], " at step '%s'" % r["failed_step"] if r.get("failed_step") else "")
        for r in failed
    ]


def report(rows, strategy, markdown=False, check_mode=False):
    """The whole report as text (the table and the summary) or as a Markdown document."""
    if not markdown:
        return text_table(rows) + "\n" + summary(rows, check_mode)
    reasons = ["- **%s**: %s" % (r["host"], r["reason"]) for r in rows if r.get("reason")]
    return (
        "\n".join(
            ["# Fleet rollback (%s)" % strategy, "", markdown_table(rows), "", summary(rows, check_mode)]
            + (["", "## Why", "", *reasons] if reasons else [])
        )
        + "\n"
    )
