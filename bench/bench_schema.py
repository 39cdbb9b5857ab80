"""What the schema check adds to a rollback's preflight, on a PostgreSQL database of 200 tables.

A one-service project (the test bed's PostgreSQL) gets 200 tables of six columns, an index and a
foreign key each, and is recorded with its database declared. Then, alternating RUNS times, both
through Ansible as the roles run them: the preflight's read of the project without the check
(compose_release_info, compare_deployed and target), and compose_schema (the same read, then the
dump, the migration tables and the verdict). The difference of the medians is what the check
adds (goal: under 2 s).
Run: `make bench BENCH=schema` (RUNS=n to change the count).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "testbed"))

import report  # noqa: E402
import testbed  # noqa: E402

RUNS = int(os.environ.get("RUNS", "7"))
TABLES = 200
COMPOSE = """\
services:
  db:
    image: {postgres}
    environment:
      POSTGRES_PASSWORD: pw-bench
      POSTGRES_DB: shop
    volumes:
      - dbdata:/var/lib/postgresql/data
volumes:
  dbdata:
"""
DATABASES = [{"service": "db", "engine": "postgres", "database": "shop", "user": "postgres"}]


def ddl():
    statements = ["CREATE TABLE t000 (id serial PRIMARY KEY, name text NOT NULL)"]
    for n in range(1, TABLES):
        statements.append(
            "CREATE TABLE t%03d (id serial PRIMARY KEY, parent integer REFERENCES t%03d(id), name text NOT NULL, "
            "qty integer NOT NULL DEFAULT 0 CHECK (qty >= 0), created timestamptz NOT NULL DEFAULT now(), note text)"
            % (n, n - 1)
        )
        statements.append("CREATE INDEX t%03d_name ON t%03d (name)" % (n, n))
    return "; ".join(statements)


def timed(module, args):
    started = time.monotonic()
    result = testbed.run_module(module, args)
    elapsed = time.monotonic() - started
    if result.get("failed"):
        raise SystemExit("%s failed: %s" % (module, result.get("msg")))
    return elapsed, result


def main():
    ledger = tempfile.mkdtemp(prefix="bench-schema-ledger-")
    stacks = testbed.Stacks(Path(tempfile.mkdtemp(prefix="bench-schema-")), "bench-schema")
    try:
        stack = stacks(COMPOSE.format(postgres=testbed.IMAGES["POSTGRES_IMAGE"]))
        stack.up()
        testbed.run(
            ["docker", "exec", stack.container_id("db"), "psql", "-q", "-U", "postgres", "-d", "shop", "-c", ddl()]
        )
        common = {"project_src": str(stack.dir), "project_name": stack.name, "ledger_dir": ledger}
        _t, recorded = timed("compose_release", dict(common, version="v1", databases=DATABASES))
        assert recorded["databases"]["db/shop"]["tables"] == TABLES, recorded["databases"]
        without, with_check = [], []
        verdict = None
        for _run in range(RUNS):
            without.append(timed("compose_release_info", dict(common, compare_deployed=True, target="current"))[0])
            elapsed, result = timed("compose_schema", dict(common, databases=DATABASES, target="current"))
            with_check.append(elapsed)
            verdict = result["verdict"]
        base, check = statistics.median(without), statistics.median(with_check)
        rows = [
            [
                "preflight read without the check (compose_release_info)",
                "%.2f" % base,
                "%.2f-%.2f" % (min(without), max(without)),
            ],
            [
                "with the schema check (compose_schema)",
                "%.2f" % check,
                "%.2f-%.2f" % (min(with_check), max(with_check)),
            ],
        ]
        body = (
            "%d tables (six columns, an index, a foreign key and a check each), %d runs alternating, each module "
            "run through `ansible` as the roles run it; verdict `%s`.\n\n%s\n\n"
            "**The schema check adds %.2f s** to the preflight (goal: under 2 s); ratio %.2fx of the read it follows."
            % (TABLES, RUNS, verdict, report.table(["module", "median s", "range s"], rows), check - base, check / base)
        )
        report.write_section(
            "schema", "compose_schema: what the schema check adds to the preflight", "make bench BENCH=schema", body
        )
    finally:
        stacks.down()


if __name__ == "__main__":
    main()
