"""Schema-aware rollback against real PostgreSQL and MariaDB: the test app runs its own Alembic
migrations at start (v1 creates records, v2 adds the nullable records.note, v3 drops it).

Each rollback declares the shop's database; the verdict decides before anything stops.
"""

from __future__ import annotations

import json
import shutil

import pytest
import testbed
from faults import REFUSED, REVERTED, said
from proxy import HostCaddy, host_migrates_queued_connections
from shop import LEDGER, BlueGreenShop, RecreateShop
from testbed import assert_ok

DOWNGRADE = {"service": "app", "command": ["python3", "/opt/app/migrate.py", "downgrade", "{version}"]}


def make_shop(cls, compose_stack, images, free_port, tmp_path, engine, **extra):
    port = free_port()
    stack = compose_stack(testbed.shop_compose(engine, images, port))
    return cls(stack, port, tmp_path, databases=testbed.SHOP_DATABASES[engine], **extra)


@pytest.fixture(params=["postgres", "mariadb"])
def db_shop(request, compose_stack, images, free_port, tmp_path):
    shop = make_shop(RecreateShop, compose_stack, images, free_port, tmp_path, request.param)
    shop.engine = request.param
    yield shop
    shutil.rmtree(LEDGER / "projects" / shop.stack.name, ignore_errors=True)


@pytest.fixture
def pg_shop(compose_stack, images, free_port, tmp_path):
    shop = make_shop(RecreateShop, compose_stack, images, free_port, tmp_path, "postgres")
    yield shop
    shutil.rmtree(LEDGER / "projects" / shop.stack.name, ignore_errors=True)


def rows(shop):
    return sorted(shop.rows())


def schema(shop, **extra):
    return testbed.run_module(
        "compose_schema",
        dict(project_src=str(shop.dir), project_name=shop.stack.name, databases=shop.databases, **extra),
    )


def restore_point(shop, tmp_path):
    """What the deploy playbook does before a deploy: a restore point of the running release's data."""
    return testbed.run_module(
        "compose_release",
        dict(
            project_src=str(shop.dir),
            project_name=shop.stack.name,
            databases=shop.databases,
            restore_point=True,
            restore_point_dir=str(tmp_path / "points"),
        ),
    )


def host_state(shop):
    """What must not change when a rollback is refused: containers (and when they started), the
    ledger's current release, the data and the version served."""
    ids = {svc: shop.stack.container_id(svc) for svc in ("app", "db")}
    started = {
        svc: testbed.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", cid]).stdout.strip()
        for svc, cid in ids.items()
    }
    return ids, started, shop.info()["current"]["id"], rows(shop), shop.version()


def test_compatible_rollback_proceeds_and_keeps_every_row(db_shop):
    shop = db_shop
    v1 = shop.deploy("v1")
    shop.write("written by v1")
    shop.deploy("v2", notes="0002 adds records.note (nullable)")
    shop.write("written by v2")
    before = rows(shop)

    plan = shop.rollback(check=True, recreate_databases=shop.databases)
    assert_ok(plan)
    assert "schema: compatible, policy refuse: proceed" in plan.stdout  # check mode shows the verdict and plan
    assert shop.version() == "v2"

    result = shop.rollback(recreate_databases=shop.databases)
    assert_ok(result)
    assert shop.version() == "v1"
    assert rows(shop) == before  # every row kept, v1's code reads past the column it does not know
    assert "schema: compatible (policy refuse)" in result.stdout
    assert "column records.note: added since" in result.stdout
    assert "0002 adds records.note (nullable)" in result.stdout  # the deploy notes of the release crossed
    assert shop.info()["current"]["id"] == v1
    audit = shop.audit()[-1]
    assert audit["details"]["schema"]["verdict"] == "compatible"
    assert audit["details"]["schema"]["action"] == "proceed"


@pytest.mark.fault(
    "a rollback to a release whose code cannot run on the {db_shop} schema (a column dropped since)",
    where="recreate rollback, schema check (policy refuse)",
    expected=REFUSED,
)
def test_incompatible_rollback_is_refused_before_anything_stops(db_shop, fault_case):
    shop = db_shop
    shop.deploy("v2")
    shop.write("written by v2")
    shop.deploy("v3", notes="0003 drops records.note, irreversible")
    shop.write("written by v3")
    volume = shop.stack.volume("dbdata")
    before = host_state(shop)
    checked = testbed.run(["docker", "volume", "inspect", volume]).stdout

    result = shop.rollback(recreate_databases=shop.databases)
    assert result.returncode != 0
    assert "refused before anything stopped" in result.stdout
    assert "column records.note: in the target, dropped since (incompatible)" in result.stdout
    assert "Nothing was changed" in result.stdout
    fault_case.observed(said(result.stdout, "refused before anything stopped"))
    assert host_state(shop) == before
    assert testbed.run(["docker", "volume", "inspect", volume]).stdout == checked
    assert "pw-shop" not in result.stdout + result.stderr  # the password never shows
    # The audit log has every run, refused ones too.
    refused = shop.audit()[-1]
    assert refused["event"] == "refused_rollback" and refused["details"]["step"] == "preflight", refused
    assert "incompatible" in refused["details"]["reason"] and "pw-shop" not in json.dumps(refused)


def test_downgrade_runs_the_newer_release_down_migration(pg_shop):
    shop = pg_shop
    v2 = shop.deploy("v2")
    shop.write("written by v2")
    shop.deploy("v3")
    shop.write("written by v3")
    bodies = rows(shop)

    result = shop.rollback(
        recreate_databases=shop.databases, recreate_schema_policy="downgrade", recreate_schema_downgrade=DOWNGRADE
    )
    assert_ok(result)
    assert shop.version() == "v2"
    assert rows(shop) == bodies  # every row kept
    after = schema(shop, target=v2)
    assert not after.get("failed"), after
    assert after["verdict"] == "unchanged", after["changes"]  # the live schema is the target's
    assert "(downgraded)" in result.stdout


@pytest.mark.fault("the down-migration fails", where="recreate rollback, schema policy downgrade", expected=REVERTED)
def test_failing_downgrade_keeps_the_current_release_serving(pg_shop, fault_case):
    shop = pg_shop
    shop.deploy("v2")
    shop.deploy("v3")
    shop.write("written by v3")
    before = rows(shop)
    failing = {"service": "app", "command": ["python3", "/opt/app/migrate.py", "downgrade", "no-such-revision"]}

    result = shop.rollback(
        recreate_databases=shop.databases, recreate_schema_policy="downgrade", recreate_schema_downgrade=failing
    )
    assert result.returncode != 0
    assert "the down-migration" in result.stdout and "failed" in result.stdout
    answer = said(result.stdout, "the down-migration")
    fault_case.observed(answer)
    fault_case.observed(answer.partition(" --- ")[2])  # how the host was put back
    assert shop.version() == "v3"
    assert rows(shop) == before
    assert "The schema did not change" in result.stdout


def test_restore_brings_back_the_restore_point_and_counts_what_it_takes_away(pg_shop, tmp_path):
    shop = pg_shop
    shop.deploy("v2")
    shop.write("kept 1")
    shop.write("kept 2")
    # The deploy playbook's first step: a restore point of v2's data, before v3 migrates it.
    db_started = host_state(shop)[1]["db"]
    point = restore_point(shop, tmp_path)
    assert not point.get("failed"), point
    shop.deploy("v3")
    for n in range(3):
        shop.write("after the restore point %d" % n)

    result = shop.rollback(recreate_databases=shop.databases, recreate_schema_policy="restore")
    assert_ok(result)
    assert shop.version() == "v2"
    assert rows(shop) == ["kept 1", "kept 2"]  # the data of the restore point
    audit = shop.audit()[-1]["details"]["schema"]
    assert audit["action"] == "restored"
    assert audit["rows_taken_away"] == ["db/shop records: 3 of 5 rows (kept in the safety archive)"]
    safety = audit["restored"][0]["safety_archive"]
    # PostgreSQL's restore point is an online dump: the database served throughout.
    assert point["restore_point"]["archives"][0]["kind"] == "dump", point
    assert audit["restored"][0]["database"] == "db/shop", audit

    # The rows the restore took away are in the safety dump, checked and counted by its own verify.
    verified = testbed.run_module("database_backup", dict(state="verify", archive=safety))
    assert not verified.get("failed"), verified
    assert verified["rows"]["records"] == 5, verified
    assert host_state(shop)[1]["db"] == db_started, "the database was stopped for its restore point or restore"


@pytest.mark.fault(
    "bad database declarations (no such service, no pg_dump, wrong password, no such database or user), "
    "and schema policy restore without a restore point",
    where="compose_schema; recreate rollback, schema policy restore",
    expected=REFUSED,
)
def test_bad_declarations_fail_clearly_and_change_nothing(pg_shop, fault_case):
    shop = pg_shop
    shop.deploy("v1", record=False)
    # A target recorded before databases were declared: the verdict is unknown, and says how to go on.
    shop.databases, declared = [], shop.databases
    shop.record("v1")
    shop.databases = declared
    shop.deploy("v2")
    unknown = schema(shop)
    assert unknown["verdict"] == "unknown" and "no schema was recorded with the target" in unknown["changes"][0]
    assert "ways forward" in unknown["ways_forward"]

    cases = [
        (dict(declared[0], service="nosuch"), "no service nosuch in the project"),
        (dict(declared[0], service="app"), "has no pg_dump"),
        (dict(declared[0], password="not-the-password-42"), "wrong password for user postgres"),
        (dict(declared[0], database="nosuchdb"), "database nosuchdb does not exist"),
        (dict(declared[0], user="nosuchuser", password=None), "user nosuchuser is unknown"),
    ]
    for decl, expected in cases:
        failed = testbed.run_module(
            "compose_schema", dict(project_src=str(shop.dir), project_name=shop.stack.name, databases=[decl])
        )
        assert failed.get("failed") and expected in failed["msg"], (decl, failed)
        assert "not-the-password-42" not in json.dumps(failed)
    fault_case.observed(failed["msg"])

    # engine command: the schema is what the argv prints, compared as text.
    command = [{"service": "db", "engine": "command", "command": ["pg_dump", "-s", "-U", "postgres", "shop"]}]
    shop.record("v2", databases=command)
    same = testbed.run_module(
        "compose_schema",
        dict(project_src=str(shop.dir), project_name=shop.stack.name, databases=command, target="current"),
    )
    assert same["verdict"] == "unchanged", same

    # v3 dropped a column v2 reads, and no restore point of v2 was taken: refused before anything stops.
    shop.deploy("v3")
    before = host_state(shop)
    result = shop.rollback(recreate_databases=declared, recreate_schema_policy="restore")
    assert result.returncode != 0
    assert "schema policy restore needs a restore point of release" in result.stdout
    fault_case.observed(said(result.stdout, "schema policy restore needs a restore point of release"))
    assert host_state(shop) == before


@pytest.mark.fault(
    "the target's restore point damaged (one byte flipped in its dump)",
    where="recreate rollback, schema policy restore",
    expected=REFUSED,
)
def test_damaged_restore_point_is_refused_before_anything_stops(pg_shop, tmp_path, fault_case):
    shop = pg_shop
    shop.deploy("v2")
    shop.write("kept")
    point = restore_point(shop, tmp_path)
    archive = point["restore_point"]["archives"][0]["archive"]
    shop.deploy("v3")
    with open(archive, "r+b") as fh:  # one flipped byte in the middle of the archive
        fh.seek(fh.seek(0, 2) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    before = host_state(shop)
    result = shop.rollback(recreate_databases=shop.databases, recreate_schema_policy="restore")
    assert result.returncode != 0
    assert "Verify each database dump of the restore point" in result.stdout and "sha256" in result.stdout
    fault_case.observed(said(result.stdout, "sha256"))
    assert host_state(shop) == before


@pytest.mark.fault(
    "a half-applied (dirty) golang-migrate migration in the mariadb schema",
    where="compose_schema verdict",
    expected=REFUSED,
)
def test_dirty_migration_is_incompatible(compose_stack, images, free_port, tmp_path, fault_case):
    """golang-migrate's schema_migrations says a migration is half-applied: MariaDB, no app needed."""
    shop = make_shop(RecreateShop, compose_stack, images, free_port, tmp_path, "mariadb")
    try:
        shop.deploy("v2")
        sql = ["docker", "exec", shop.stack.container_id("db"), "mariadb", "shop", "-e"]
        testbed.run(
            [
                *sql,
                "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);"
                " INSERT INTO schema_migrations VALUES (7, false)",
            ]
        )
        shop.record("v2")
        first = shop.info()["current"]["id"]
        testbed.run([*sql, "UPDATE schema_migrations SET version = 8, dirty = true"])
        verdict = schema(shop, target=first)
        assert verdict["verdict"] == "incompatible", verdict
        assert any("version 8 is dirty (half-applied)" in c for c in verdict["changes"]), verdict["changes"]
        fault_case.observed(next(c for c in verdict["changes"] if "version 8 is dirty (half-applied)" in c))
    finally:
        shutil.rmtree(LEDGER / "projects" / shop.stack.name, ignore_errors=True)


@pytest.fixture(params=["postgres", "mariadb"])
def bg_db_shop(request, compose_stack, images, free_port, tmp_path):
    port = free_port()
    stack = compose_stack(testbed.shop_compose(request.param, images, port))
    with host_migrates_queued_connections():
        caddy = HostCaddy(compose_stack, images, tmp_path / "proxy", stack.name, "127.0.0.1:%d" % port)
        yield BlueGreenShop(stack, port, tmp_path, caddy, databases=testbed.SHOP_DATABASES[request.param])
    shutil.rmtree(LEDGER / "projects" / stack.name, ignore_errors=True)


@pytest.mark.fault(
    "a blue-green rollback over an incompatible {bg_db_shop} schema, and with schema policy restore",
    where="blue_green rollback, schema check",
    expected=REFUSED,
)
def test_blue_green_compatible_proceeds_incompatible_refuses(bg_db_shop, fault_case):
    shop = bg_db_shop
    shop.deploy("v1")
    shop.deploy("v2")
    shop.write("written by v2")
    compatible = shop.rollback(blue_green_databases=shop.databases)
    assert compatible.returncode == 0, compatible.stdout[-6000:]
    assert shop.served() == "v1"
    assert "schema: compatible" in compatible.stdout
    assert rows(shop) == ["written by v2"]

    shop.deploy("v2")
    shop.deploy("v3")
    before = (shop.containers(), shop.info()["current"]["id"], rows(shop), shop.served())
    refused = shop.rollback(blue_green_databases=shop.databases)
    assert refused.returncode != 0
    assert "column records.note: in the target, dropped since" in refused.stdout
    fault_case.observed(said(refused.stdout, "column records.note: in the target, dropped since"))
    assert (shop.containers(), shop.info()["current"]["id"], rows(shop), shop.served()) == before
    assert shop.containers(shop.stack.name + "-green") == []  # no green was started

    restore = shop.rollback(blue_green_databases=shop.databases, blue_green_schema_policy="restore")
    assert restore.returncode != 0
    assert "Use stackops.rollback.recreate with recreate_schema_policy=restore" in restore.stdout
    fault_case.observed(said(restore.stdout, "Use stackops.rollback.recreate with recreate_schema_policy=restore"))
    assert (shop.containers(), shop.info()["current"]["id"], rows(shop), shop.served()) == before
