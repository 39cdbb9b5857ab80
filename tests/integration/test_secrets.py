"""Secrets stay secret (issue 32): a known secret in the project's .env, one in a service's
env_file and the database password (declared, so that each record and each
rollback's online dump use it) never appear in a rollback's output at -vvv (with --diff), in
a failed rollback's errors, in the audit log or in the fleet report - exact, base64 or URL-encoded -
and what holds them on disk (backups, the ledger, the env files a rollback writes back) is 0600."""

from __future__ import annotations

import base64
import json
import stat
import urllib.parse

import testbed
from shop import LEDGER

# Values no other part of a run would print by chance; the password has characters that URL and
# base64 encodings change.
DB_PASSWORD = "Pg+Pass/w0rd=9f3k"
ENV_SECRETS = {"v1": "env-secret-v1-4c1d7a", "v2": "env-secret-v2-8e2b90"}
EXTRA_SECRETS = {"v1": "extra-token-v1-51f0ce", "v2": "extra-token-v2-a93d27"}


def forms(secret):
    """The secret as it could leak: itself, base64 (as module arguments and archives are carried),
    URL-encoded (as in a DATABASE_URL)."""
    return {
        secret,
        base64.b64encode(secret.encode()).decode(),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
    }


ALL_FORMS = sorted(set().union(*(forms(s) for s in [DB_PASSWORD, *ENV_SECRETS.values(), *EXTRA_SECRETS.values()])))


def assert_no_secret(text, where):
    found = [form for form in ALL_FORMS if form in text]
    if found:
        at = text.index(found[0])
        context = text[max(0, at - 400) : at + 200]
        raise AssertionError("%s holds a secret (%s), here:\n%s" % (where, ", ".join(found), context))


def deploy(shop, tag):
    """Deploy `tag` with its secrets in .env and in the app's env_file (app-extra.env), recorded."""
    (shop.dir / ".env").write_text("APP_TAG=%s\nDB_PASSWORD=%s\nAPP_SECRET=%s\n" % (tag, DB_PASSWORD, ENV_SECRETS[tag]))
    (shop.dir / "app-extra.env").write_text("EXTRA_TOKEN=%s\n" % EXTRA_SECRETS[tag])
    for name in (".env", "app-extra.env"):
        (shop.dir / name).chmod(0o600)
    shop.stack.up()
    testbed.wait_http(shop.url + "/version", body_contains=tag)
    return shop.record(tag)


def roll_back_loudly(shop, tmp_path, **variables):
    """The rollback at -vvv with --diff: everything Ansible shows of each task."""
    settings = shop.variables(rollback_report_dir=str(tmp_path / "reports"), **variables)
    result = testbed.run_playbook(shop.playbook, settings, inventory=str(shop.inventory), extra_args=["-vvv", "--diff"])
    return result, result.stdout + result.stderr


def modes_of(root):
    """{path: mode} of every file below root."""
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


# The shop's database declared with its password: each release records its schema through it, and
# each rollback dumps the database online with it (PGPASSWORD, over 127.0.0.1 in the container).
DATABASE = {"service": "db", "engine": "postgres", "database": "shop", "user": "postgres", "password": DB_PASSWORD}


def test_secrets_never_show_and_the_files_holding_them_are_private(shop, tmp_path):
    shop.databases = [DATABASE]
    deploy(shop, "v1")
    v2 = deploy(shop, "v2")
    # Group-readable before the rollback: it writes them back for their owner alone.
    for name in (".env", "app-extra.env"):
        (shop.dir / name).chmod(0o640)

    done, output = roll_back_loudly(shop, tmp_path, recreate_databases=[DATABASE])
    assert done.returncode == 0, output[-6000:]
    assert "dump" in output and "db/shop" in output, "the database was not dumped: " + output[-4000:]
    assert shop.version() == "v1"
    assert (shop.dir / ".env").read_text().count(ENV_SECRETS["v1"]) == 1, "v1's env file was not put back"
    assert_no_secret(output, "the rollback's output at -vvv")

    # A rollback that fails its verification and is put back: its errors name no secret either.
    deploy(shop, "v2")
    failed, failed_output = roll_back_loudly(
        shop,
        tmp_path,
        recreate_databases=[DATABASE],
        recreate_health_timeout=15,
        recreate_health_http=[{"url": shop.url + "/version", "body_regex": "^v2$"}],
    )
    assert failed.returncode != 0 and "FAILED at step 'verify'" in failed_output, failed_output[-6000:]
    assert shop.version() == "v2"
    assert_no_secret(failed_output, "the failed rollback's output at -vvv")

    audit = "\n".join(json.dumps(entry) for entry in shop.audit())
    assert audit and '"failed_rollback"' in audit, audit[-2000:]
    assert_no_secret(audit, "the audit log")
    reports = sorted((tmp_path / "reports").glob("recreate-*"))
    assert len(reports) == 4, reports  # JSON and Markdown of each run
    for report in reports:
        assert_no_secret(report.read_text(), str(report))

    # On disk: the env files written back, every backup and every ledger file are 0600.
    assert {name: stat.S_IMODE((shop.dir / name).stat().st_mode) for name in (".env", "app-extra.env")} == {
        ".env": 0o600,
        "app-extra.env": 0o600,
    }
    backups, ledger = modes_of(shop.backups), modes_of(LEDGER / "projects" / shop.stack.name)
    assert backups and ledger
    loose = {path: oct(mode) for path, mode in {**backups, **ledger}.items() if mode & 0o077}
    assert not loose, "readable by others than their owner: %s" % loose
    assert v2 in json.dumps(shop.info()["current"])


def test_a_blue_green_rollback_shows_no_secret_and_keeps_its_staged_copy_private(bg_shop, tmp_path):
    """The same for blue_green, whose staged copy of the target's files (green-src in the ledger,
    .env and env_file included) is a second place the secrets are written to."""
    shop = bg_shop
    deploy(shop, "v1")
    deploy(shop, "v2")
    done, output = roll_back_loudly(shop, tmp_path)
    assert done.returncode == 0, output[-6000:]
    assert shop.served() == "v1"
    assert_no_secret(output, "the blue-green rollback's output at -vvv")
    assert_no_secret("\\n".join(json.dumps(entry) for entry in shop.audit()), "the audit log")
    reports = sorted((tmp_path / "reports").glob("*"))
    assert len(reports) == 2, reports
    for report in reports:
        assert_no_secret(report.read_text(), str(report))
    ledger = modes_of(LEDGER / "projects" / shop.stack.name)
    assert any("/releases/" in path and path.endswith("/.env") for path in ledger), sorted(ledger)
    loose = {path: oct(mode) for path, mode in ledger.items() if mode & 0o077}
    assert not loose, "readable by others than their owner: %s" % loose
    assert {name: stat.S_IMODE((shop.dir / name).stat().st_mode) for name in (".env", "app-extra.env")} == {
        ".env": 0o600,
        "app-extra.env": 0o600,
    }
