"""Online dumps (stackops.rollback.database_backup) against real PostgreSQL and MariaDB.

The consistency proof: a writer inserts numbered rows in transactions of ROWS_PER_TRANSACTION
while the dump runs. Restored, the dump must hold whole transactions only, a gap-free prefix
1..N, with N between the counts seen just before and just after the dump; the database serves
throughout and is never stopped.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import testbed
from faults import REFUSED

ROWS_PER_TRANSACTION = 5
WRITER_MAX_TRANSACTIONS = 4000
WRITER_MAX_SECONDS = 60
PASSWORD = "pw-dumps"  # no common word: Ansible masks no_log values everywhere in its output
FILLER_ROWS = 300000  # about 40 MB of dump: the dump takes long enough for the writer to run beside it

DB_COMPOSE = {
    "postgres": """\
services:
  db:
    image: {image}
    environment:
      POSTGRES_PASSWORD: {password}
      POSTGRES_DB: shop
  tools:
    image: {busybox}
    command: ["sleep", "3600"]
""",
    "mariadb": """\
services:
  db:
    image: {image}
    environment:
      MARIADB_DATABASE: shop
      MARIADB_USER: shop
      MARIADB_PASSWORD: {password}
  tools:
    image: {busybox}
    command: ["sleep", "3600"]
""",
}
DECLARATIONS = {
    "postgres": {"service": "db", "engine": "postgres", "database": "shop", "user": "postgres", "password": PASSWORD},
    "mariadb": {"service": "db", "engine": "mariadb", "database": "shop", "user": "shop", "password": PASSWORD},
}
SETUP = {
    "postgres": (
        "CREATE TABLE numbered (n integer PRIMARY KEY, txn integer NOT NULL);"
        "CREATE TABLE filler (id integer PRIMARY KEY, body text NOT NULL);"
        "INSERT INTO filler SELECT g, md5(g::text) || md5((g * 7)::text) || ' it''s (a), (b)' FROM "
        "generate_series(1, %d) g;" % FILLER_ROWS
    ),
    "mariadb": (
        "CREATE TABLE numbered (n integer PRIMARY KEY, txn integer NOT NULL) ENGINE=InnoDB;"
        "CREATE TABLE filler (id integer PRIMARY KEY, body text NOT NULL) ENGINE=InnoDB;"
        "INSERT INTO filler SELECT seq, CONCAT(md5(seq), md5(seq * 7), ' it''s (a),(b) \\\\ x') "
        "FROM seq_1_to_%d;" % FILLER_ROWS
    ),
}


class Database:
    """The stack's database, reached with its own client in its container."""

    def __init__(self, stack, engine):
        self.stack, self.engine = stack, engine
        self.container = stack.container_id("db")
        self.declaration = dict(DECLARATIONS[engine])

    def client(self, interactive=False):
        if self.engine == "postgres":
            argv = ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "shop"]
            env = ["-e", "PGPASSWORD=%s" % PASSWORD]
        else:
            argv = ["mariadb", "-N", "-B", "-u", "shop", "shop"]
            env = ["-e", "MYSQL_PWD=%s" % PASSWORD]
        return ["docker", "exec", *(["-i"] if interactive else []), *env, self.container, *argv]

    def sql(self, statement, check=True):
        out = testbed.run([*self.client(True)], input=statement, check=check)
        return out.stdout.strip()

    def wait(self, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if testbed.run([*self.client(True)], input="SELECT 1;", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError("%s did not accept connections in %d s" % (self.engine, timeout))

    def numbered(self):
        """(count, max) of the numbered rows."""
        count, top = self.sql("SELECT count(*), coalesce(max(n), 0) FROM numbered;").split("\t")
        return int(count), int(top)

    def started_at(self):
        return testbed.run(
            ["docker", "inspect", "-f", "{{.State.StartedAt}} {{.State.Running}}", self.container]
        ).stdout


class Writer:
    """Inserts numbered rows in transactions of ROWS_PER_TRANSACTION through one client session:
    bounded in count and in time."""

    def __init__(self, database):
        self.database = database
        self.committed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        proc = subprocess.Popen(self.database.client(True), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        deadline = time.time() + WRITER_MAX_SECONDS
        try:
            for txn in range(1, WRITER_MAX_TRANSACTIONS + 1):
                if self._stop.is_set() or time.time() > deadline:
                    break
                first = (txn - 1) * ROWS_PER_TRANSACTION + 1
                # One row per statement: the transaction, not the statement, makes them atomic.
                inserts = "".join(
                    "INSERT INTO numbered VALUES (%d, %d);\n" % (n, txn)
                    for n in range(first, first + ROWS_PER_TRANSACTION)
                )
                proc.stdin.write("BEGIN;\n%sCOMMIT;\n" % inserts)
                proc.stdin.flush()
                self.committed = txn
                time.sleep(0.01)
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)

    def start(self):
        self._thread.start()
        deadline = time.time() + 30
        while self.database.numbered()[0] < 10 * ROWS_PER_TRANSACTION and time.time() < deadline:
            time.sleep(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=40)


@pytest.fixture(params=["postgres", "mariadb"])
def database(request, compose_stack, images):
    engine = request.param
    image = images["POSTGRES_IMAGE"] if engine == "postgres" else images["MARIADB_IMAGE"]
    stack = compose_stack(
        DB_COMPOSE[engine].format(image=image, password=PASSWORD, busybox=images["BUSYBOX_IMAGE"]), prefix="st-dump"
    )
    stack.up()  # healthy: the image's entrypoint has finished its first start
    db = Database(stack, engine)
    db.wait()
    db.sql(SETUP[engine])
    return db


def backup(db, dest, **extra):
    return testbed.run_module(
        "database_backup",
        dict(project=db.stack.name, databases=[db.declaration], dest=str(dest), **extra),
    )


def restore(db, archive, **extra):
    return testbed.run_module(
        "database_backup",
        dict(project=db.stack.name, databases=[db.declaration], archive=archive, state="restore", **extra),
    )


def test_online_dump_is_consistent_and_restores_whole_transactions(database, tmp_path):
    db, started = database, database.started_at()
    writer = Writer(db)
    writer.start()
    try:
        before = db.numbered()[1]
        result = backup(db, tmp_path / "dumps")
        after = db.numbered()[1]
    finally:
        writer.stop()
    assert not result.get("failed"), result
    assert result["changed"] and result["stopped_containers"] == [], result
    dump = result["backups"][0]
    dumped = dump["rows"]["numbered"]
    assert before < after, "the writer did not write while the dump ran (%d then %d)" % (before, after)
    assert before <= dumped <= after, (before, dumped, after)
    assert dumped % ROWS_PER_TRANSACTION == 0, "the dump holds part of a transaction: %d rows" % dumped
    assert dump["rows"]["filler"] == FILLER_ROWS, dump["rows"]
    assert oct(os.stat(dump["archive"]).st_mode & 0o777) == "0o600"
    assert oct(os.stat(dump["manifest"]).st_mode & 0o777) == "0o600"
    assert PASSWORD not in Path(dump["manifest"]).read_text()
    assert db.started_at() == started, "the database was restarted for its dump"

    verified = testbed.run_module("database_backup", dict(archive=dump["archive"], state="verify"))
    assert not verified.get("failed") and not verified["changed"], verified
    assert verified["rows"] == dump["rows"], verified

    live = db.numbered()[0]
    assert live > dumped
    restored = restore(db, dump["archive"], safety_dir=str(tmp_path / "safety"))
    assert not restored.get("failed"), restored
    assert restored["changed"] and restored["rows_before"]["numbered"] == live, restored
    count, top = db.numbered()
    assert count == top == dumped, "restored rows are not the gap-free prefix 1..%d: %d rows, max %d" % (
        dumped,
        count,
        top,
    )
    assert db.sql("SELECT count(DISTINCT txn) FROM numbered;") == str(dumped // ROWS_PER_TRANSACTION)
    assert db.sql("SELECT count(*) FROM filler;") == str(FILLER_ROWS)
    assert os.path.exists(restored["safety_archive"]), restored
    # The safety dump holds what the restore replaced: every row the writer committed.
    safety = testbed.run_module("database_backup", dict(archive=restored["safety_archive"], state="verify"))
    assert safety["rows"]["numbered"] == live, safety
    assert db.started_at() == started, "the database was restarted for its restore"


@pytest.mark.fault(
    "a {database} dump damaged (one byte flipped) between backup and restore",
    where="database_backup restore",
    expected=REFUSED,
)
def test_a_damaged_dump_is_refused_before_the_database_is_touched(database, tmp_path, fault_case):
    db = database
    dump = backup(db, tmp_path)["backups"][0]
    db.sql("INSERT INTO numbered VALUES (1, 1);")
    data = bytearray(Path(dump["archive"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(dump["archive"]).write_bytes(bytes(data))
    answer = restore(db, dump["archive"])
    assert (
        answer["failed"] and "does not match its manifest" in answer["msg"] and "nothing was changed" in answer["msg"]
    )
    fault_case.observed(answer["msg"])
    assert db.numbered() == (1, 1), "the database changed"


@pytest.mark.fault(
    "a {database} dump whose rows no longer fit its manifest's counts",
    where="database_backup restore",
    expected=REFUSED,
)
def test_a_load_that_fails_leaves_the_database_as_it_was(database, tmp_path, fault_case):
    """A dump whose rows no longer fit the manifest's counts fails its load's check: nothing is lost."""
    db = database
    dump = backup(db, tmp_path)["backups"][0]
    db.sql("INSERT INTO numbered VALUES (1, 1), (2, 1);")
    manifest = Path(dump["manifest"])
    # The check under test is the load's own: make the manifest expect one row more than the dump holds.
    text = manifest.read_text().replace('"numbered": 0', '"numbered": 1')
    assert text != manifest.read_text()
    manifest.write_text(text)
    answer = testbed.run_module(
        "database_backup",
        dict(project=db.stack.name, databases=[db.declaration], archive=dump["archive"], state="restore"),
    )
    assert answer["failed"], answer
    assert "does not match its manifest" in answer["msg"], answer["msg"]
    fault_case.observed(answer["msg"])
    assert db.numbered() == (2, 2), "the database changed"


@pytest.mark.fault(
    "a {database} declaration naming a service without the dump client",
    where="database_backup backup",
    expected=REFUSED,
)
def test_dump_client_missing_is_a_clear_error(database, tmp_path, fault_case):
    db = database
    tools = dict(db.declaration, service="tools")
    answer = testbed.run_module(
        "database_backup", dict(project=db.stack.name, databases=[tools], dest=str(tmp_path / "d"))
    )
    assert answer["failed"], answer
    client = "pg_dump" if db.engine == "postgres" else "mariadb-dump"
    assert "has no %s" % client in answer["msg"] and "tools" in answer["msg"], answer["msg"]
    fault_case.observed(answer["msg"])
    assert os.listdir(tmp_path / "d") == []


@pytest.mark.fault(
    "the destination's disk fills up during a {database} dump", where="database_backup backup", expected=REFUSED
)
def test_disk_full_during_a_dump_leaves_nothing(database, tmp_path, fault_case):
    db, started = database, database.started_at()
    with testbed.small_filesystem(tmp_path / "small") as small:
        answer = backup(db, small)
        assert answer["failed"] and "No space left on device" in answer["msg"], answer
        fault_case.observed(answer["msg"])
        assert os.listdir(small) == [], os.listdir(small)
    assert db.started_at() == started
    assert db.sql("SELECT count(*) FROM filler;") == str(FILLER_ROWS)


@pytest.mark.fault(
    "the postgres dump's session is terminated by the server half way",
    where="database_backup backup",
    expected=REFUSED,
)
def test_dump_failing_half_way_leaves_no_partial_archive(compose_stack, images, tmp_path, fault_case):
    """The dump's session is ended from the server side while it streams: no file is left, the database serves."""
    stack = compose_stack(
        DB_COMPOSE["postgres"].format(
            image=images["POSTGRES_IMAGE"], password=PASSWORD, busybox=images["BUSYBOX_IMAGE"]
        ),
        prefix="st-dump-cut",
    )
    stack.up()
    db = Database(stack, "postgres")
    db.wait()
    db.sql(SETUP["postgres"].replace(str(FILLER_ROWS), str(FILLER_ROWS * 4)))
    started, outcome = db.started_at(), {}
    worker = threading.Thread(target=lambda: outcome.update(backup(db, tmp_path / "d")), daemon=True)
    worker.start()
    terminated = "f"
    deadline = time.time() + 60
    while terminated != "t" and worker.is_alive() and time.time() < deadline:
        terminated = db.sql(
            "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM pg_stat_activity "
            "WHERE application_name = 'pg_dump' AND state = 'active' AND query LIKE 'COPY %';"
        )
        time.sleep(0.05)
    worker.join(timeout=120)
    assert terminated == "t", "the dump was never seen running: %s" % outcome
    assert outcome.get("failed") and "online dump" in outcome["msg"], outcome
    fault_case.observed(outcome["msg"])
    assert os.listdir(tmp_path / "d") == [], os.listdir(tmp_path / "d")
    assert db.started_at() == started
    assert db.sql("SELECT count(*) FROM filler;") == str(FILLER_ROWS * 4)


@pytest.mark.parametrize(("major", "owner"), [("13", "postgres"), ("17", "pg_database_owner")])
def test_dumps_load_on_the_oldest_and_newest_postgresql(major, owner, compose_stack, images, tmp_path):
    """A dump loads back on the oldest and the newest PostgreSQL the README names: the loader
    makes schema public as that version's initdb does (pg_database_owner came in 14)."""
    stack = compose_stack(
        DB_COMPOSE["postgres"].format(
            image=images["POSTGRES%s_IMAGE" % major], password=PASSWORD, busybox=images["BUSYBOX_IMAGE"]
        ),
        prefix="st-dump",
    )
    stack.up()
    db = Database(stack, "postgres")
    db.wait()
    assert db.sql("SHOW server_version_num;").startswith(major), "not PostgreSQL %s" % major
    db.sql("CREATE TABLE numbered (n integer PRIMARY KEY, txn integer NOT NULL);")
    db.sql("INSERT INTO numbered SELECT g, g FROM generate_series(1, 100) g;")
    dump = backup(db, tmp_path / "dumps")["backups"][0]
    db.sql("INSERT INTO numbered SELECT g, g FROM generate_series(101, 150) g;")

    restored = restore(db, dump["archive"], safety_dir=str(tmp_path / "safety"))
    assert not restored.get("failed"), restored
    assert db.numbered() == (100, 100)
    assert db.sql("SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'public';") == owner
    safety = testbed.run_module("database_backup", dict(archive=restored["safety_archive"], state="verify"))
    assert safety["rows"]["numbered"] == 150, safety
