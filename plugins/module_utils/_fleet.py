# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A fleet rollback's settings checked and its report laid out, pure (playbooks/fleet.yml uses
them through the filter stackops.rollback.fleet).

A report row is one host's outcome: `host`, `batch` (1, 2, ... in the order the batches ran; none
for a host no batch started), `tier` and `canary` (its batch's tier, and whether it was the
tier's canary), `status`, `from`/`from_version`, `to`/`to_version`,
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
    "degraded": "DEGRADED in the soak",
    "put_back": "rolled back, then put back",
    "put_back_failed": "FAILED to go back",
}
FAILED = ("reverted", "failed", "refused", "degraded", "unreachable")
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


def batches(hosts, value, total=None):
    """The hosts in batches, in order, as Ansible's `serial` would make them: each size of a list in
    turn, the last one repeated, a percentage of `total` hosts (all of them unless given;
    batch_errors must have passed)."""
    sizes = value if isinstance(value, list) else [value]
    left, made = list(hosts), []
    total = len(left) if total is None else total
    while left:
        size = _size(sizes[min(len(made), len(sizes) - 1)], total)
        made.append(left[:size])
        left = left[size:]
    return made


def _whole(value):
    """A whole number of hosts from 0, or None."""
    text = str(value).strip()
    return None if isinstance(value, bool) or not text.isdigit() else int(text)


def tier_errors(hosts, tiers, groups):
    """What is wrong with rollback_tiers (inventory groups rolled back in that order) for these
    hosts: a value that is no list of names, a group the inventory lacks, a host in two tiers, a
    host in none."""
    if not tiers:
        return []
    if not isinstance(tiers, list) or not all(isinstance(tier, str) and tier for tier in tiers):
        return [
            "rollback_tiers %r is not a list of inventory groups: give them in the order they roll back, "
            "for example [workers, web, proxy]." % (tiers,)
        ]
    errors = []
    unknown = [tier for tier in tiers if tier not in groups]
    if unknown:
        errors.append(
            "rollback_tiers names %s, not a group of the inventory (its groups: %s)."
            % (", ".join(unknown), ", ".join(sorted(g for g in groups if g not in ("all", "ungrouped"))) or "none")
        )
    tiers_of = {}
    for tier in tiers:
        for host in groups.get(tier) or []:
            if host in hosts:
                tiers_of.setdefault(host, []).append(tier)
    twice = ["%s (%s)" % (host, ", ".join(of)) for host, of in tiers_of.items() if len(of) > 1]
    if twice:
        errors.append(
            "Hosts in more than one tier: %s; a host rolls back once: put it in one of the groups." % "; ".join(twice)
        )
    left_out = [host for host in hosts if host not in tiers_of]
    if left_out and not unknown:
        errors.append(
            "Hosts chosen but in no tier: %s; add their group to rollback_tiers, or leave them out with -l."
            % ", ".join(left_out)
        )
    return errors


def tiered(hosts, tiers=None, groups=None):
    """[(tier, its hosts in their order)] in the tiers' order, tiers none of the hosts is in left
    out; one tier named None without rollback_tiers."""
    if not tiers:
        return [(None, list(hosts))]
    made = [(tier, [host for host in hosts if host in (groups.get(tier) or [])]) for tier in tiers]
    return [(tier, members) for tier, members in made if members]


def plan_errors(hosts, value, canary=0, tiers=None, groups=None):
    """What is wrong with a fleet's batches: rollback_batch, rollback_tiers, and rollback_canary (a
    whole number of hosts rolled back first, on their own, at most as many as the first tier's)."""
    errors = batch_errors(value)
    wrong_tiers = tier_errors(hosts, tiers, groups or {})
    errors += wrong_tiers
    count = _whole(canary)
    first = (tiered(hosts, tiers, groups or {}) or [(None, [])])[0] if not wrong_tiers else (None, hosts)
    if count is None:
        errors.append(
            "rollback_canary %r is not a number of hosts: give how many hosts roll back first, on their "
            "own (1), or 0 for none." % (canary,)
        )
    elif count > len(first[1]):
        errors.append(
            "rollback_canary %d is more than the %d host%s %s: give at most %d, or 0 for none."
            % (
                count,
                len(first[1]),
                "" if len(first[1]) == 1 else "s",
                "chosen" if first[0] is None else "of the first tier, %s" % first[0],
                len(first[1]),
            )
        )
    return errors


def plan(hosts, value, canary=0, tiers=None, groups=None):
    """The batches in the order they run, tier after tier: in each, `canary` hosts first on their own
    (a batch marked canary; the whole tier when it has fewer), then the others in batches of `value`
    (a percentage counts the tier's hosts, the canary too). plan_errors must have passed."""
    count = _whole(canary) or 0
    made = []
    for tier, members in tiered(hosts, tiers, groups or {}):
        if count:
            made.append({"tier": tier, "canary": True, "hosts": members[:count]})
        made += [
            {"tier": tier, "canary": False, "hosts": batch}
            for batch in batches(members[count:], value, total=len(members))
        ]
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


def _batch(row):
    """The batch's number, with its tier and whether it was the canary: `3 (web, canary)`."""
    marks = [mark for mark in (row.get("tier"), "canary" if row.get("canary") else None) if mark]
    return "%s%s" % (row.get("batch") or "-", " (%s)" % ", ".join(marks) if marks else "")


def cells(row):
    """The row's values as the table shows them, in COLUMNS order."""
    downtime = _downtime(row)
    status = row.get("status", "not_started")
    return (
        str(row.get("host", "?")),
        _batch(row),
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


def _label(release):
    return "%s (%s)" % (release.get("version") or "-", (release.get("id") or "-")[:12])


def common_release(infos):
    """The fleet's `common` target: the newest release recorded on every host, other than what a
    host was deployed with and runs now (rolling back to it would change nothing there), failed
    deploys skipped. `infos` is each host's compose_release_info result ({host: info}).

    Returns (release id, None), or (None, an error that lists each host's releases). A host that
    was rolled back already runs a release of its ledger's rollback: that one stays a candidate,
    so the same command after a halt finds the same target.
    """
    recorded, excluded, created = None, set(), {}
    for info in infos.values():
        ids = {r["id"] for r in info.get("releases") or []}
        recorded = ids if recorded is None else recorded & ids
        excluded |= {e.get("release") for e in info.get("failed_deploys") or []}
        settled = [e for e in info.get("history") or [] if e.get("event") in ("deploy", "rollback")]
        if settled and settled[-1].get("event") == "deploy":
            excluded.add(settled[-1].get("release"))
        for release in info.get("releases") or []:
            when = release.get("created") or ""
            created[release["id"]] = min(created.get(release["id"], when), when)
    candidates = sorted((recorded or set()) - excluded, key=lambda release_id: (created[release_id], release_id))
    if candidates:
        return candidates[-1], None
    listing = "; ".join(
        "%s: %s" % (host, ", ".join(_label(r) for r in info.get("releases") or []) or "no release")
        for host, info in infos.items()
    )
    return None, (
        "rollback_target common: no release is recorded on every host other than the one a host was "
        "deployed with and runs now (failed deploys do not count). Each host's releases, newest first: %s. "
        "Name a release for the fleet with rollback_target (a version label such as v1.4.2), or roll the "
        "hosts back one by one." % listing
    )
