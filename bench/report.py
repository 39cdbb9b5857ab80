"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections intact.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Made by `make bench` (each section names the command that made it). These machines are noisy:
every figure is measured side by side with its baseline in the same run, so read the ratios;
absolute times are context only.
"""


def machine():
    try:
        docker = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout.strip()
    except OSError:
        docker = "?"
    cores = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return "%s, %s cores, Python %s, Docker %s" % (
        platform.platform(terse=True),
        cores,
        platform.python_version(),
        docker,
    )


def write_section(name, title, command, body):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "<!-- bench:%s -->\n## %s\n\nCommand: `%s`; run %s on %s.\n\n%s\n<!-- /bench:%s -->" % (
        name,
        title,
        command,
        stamp,
        machine(),
        body.strip(),
        name,
    )
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(r"<!-- bench:%s -->.*?<!-- /bench:%s -->" % (re.escape(name), re.escape(name)), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda match: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(section)


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for header in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# Ansible's own per-task timer (ansible.posix.profile_tasks), for the playbook runs a benchmark times.
PROFILE_ENV = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "500"}
RECAP_LINE = re.compile(r"^(?P<task>.+?) -+ (?P<seconds>\d+\.\d+)s$")


@contextlib.contextmanager
def profiled():
    """Playbooks run inside it print profile_tasks' recap of their slowest tasks."""
    saved = {key: os.environ.get(key) for key in PROFILE_ENV}
    os.environ.update(PROFILE_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def top_tasks(stdout, count=None):
    """[(task, seconds)] from the TASKS RECAP that profile_tasks printed, slowest first."""
    recap = stdout.split("TASKS RECAP", 1)[-1] if "TASKS RECAP" in stdout else ""
    found = [(m.group("task"), float(m.group("seconds"))) for m in map(RECAP_LINE.match, recap.splitlines()) if m]
    return sorted(found, key=lambda item: -item[1])[:count]


def profile_table(tasks, wall):
    """The slowest tasks as a Markdown table, each with its share of the wall time."""
    rows = [
        (task.replace("|", "/"), "%.2f" % seconds, "%.0f %%" % (100 * seconds / wall)) for task, seconds in tasks[:10]
    ]
    return table(["task (profile_tasks, last round of ours)", "s", "of the wall time"], rows)
