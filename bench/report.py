"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections intact.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
"""

from __future__ import annotations

import datetime
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
