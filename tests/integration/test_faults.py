"""The fault matrix's own cases (tests/testbed/faults.py): faults no other test file puts to the
collection. The ledger damaged by hand or by a crash, ..."""

from __future__ import annotations

import json
import re

import pytest
import testbed
from faults import CONVERGES, REFUSED
from shop import LEDGER, host_state
from writer import rows_written_throughout


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def assert_refused(result, *words):
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-6000:]
    missing = [w for w in words if w not in text]
    assert not missing, "the error does not say %s:\n%s" % (missing, text[-6000:])


def unchanged_state(shop):
    """host_state without the lock's guard file: an empty file the first lock creates for flock and
    every later one reuses (it holds nothing and is never removed)."""
    return {path: value for path, value in host_state(shop).items() if not path.endswith("/lock.guard")}


def failure_line(result, *words):
    """The line of the playbook's output that holds every one of words (the error it printed), from
    the module's own message on."""
    line = next((line.strip() for line in result.stdout.splitlines() if all(w in line for w in words)), None)
    assert line is not None, "no line of the output says %s:\n%s" % (words, result.stdout[-6000:])
    return re.sub(r'^"msg": ', "", line.split("Module failed: ", 1)[-1]).strip('"')


# -- the ledger damaged ----------------------------------------------------------------------------
# Each: v1 and v2 deployed and recorded, then one ledger file damaged as a crash or a hand edit
# leaves it; the rollback to v1 must refuse before anything changes and name the file; the repair
# that README.md's "Repairing the ledger" gives must then let the rollback through.


def damage_history(ledger, v1):
    """A crash in the middle of a line: the last event cut in half."""
    path = ledger / "history.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(data.splitlines()[-1]) // 2 - 1])
    return path, "line %d is damaged" % len(data.splitlines())


def damage_release_file(ledger, v1):
    """The target's release.json truncated."""
    path = ledger / "releases" / v1 / "release.json"
    path.write_bytes(path.read_bytes()[:100])
    return path, "is damaged"


def edit_release_file(ledger, v1):
    """The target's release.json edited by hand: valid JSON, another image for the app."""
    path = ledger / "releases" / v1 / "release.json"
    release = json.loads(path.read_text())
    release["services"]["app"]["image_id"] = "sha256:" + "0" * 64
    path.write_text(json.dumps(release, indent=2, sort_keys=True) + "\n")
    return path, "does not match its checksum"


def edit_stored_file(ledger, v1):
    """The ledger's copy of the target's compose.yml edited by hand."""
    path = ledger / "releases" / v1 / "files" / "compose.yml"
    path.write_text(path.read_text() + "# edited\n")
    return path.parent.parent, "does not match its checksum"


DAMAGES = {
    "history-cut-in-half": damage_history,
    "release-truncated": damage_release_file,
    "release-edited": edit_release_file,
    "stored-file-edited": edit_stored_file,
}


@pytest.mark.fault("the ledger damaged: {damage}", where="recreate playbook, before any change", expected=REFUSED)
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_ledger_is_refused_naming_the_file_and_nothing_changes(shop, damage, fault_case):
    v1 = shop.deploy("v1")
    shop.write("row 1")
    shop.deploy("v2")
    ledger = LEDGER / "projects" / shop.stack.name
    path, words = DAMAGES[damage](ledger, v1)
    before = unchanged_state(shop)
    with rows_written_throughout(shop.stack.container_id("db")):
        result = shop.rollback()
    assert_refused(result, str(path), words)
    fault_case.observed(failure_line(result, words))
    assert unchanged_state(shop) == before, "a refused rollback changed the host"
    assert shop.version() == "v2" and shop.rows() == ["row 1"]
    if damage == "history-cut-in-half":
        # README.md, "Repairing the ledger": a copy kept, the damaged line deleted, and the running
        # release (the cut line was its deploy) recorded again; the rollback then goes through.
        history = ledger / "history.jsonl"
        lines = history.read_bytes().splitlines(keepends=True)
        history.write_bytes(b"".join(lines[:-1]))
        shop.record("v2")
        with rows_written_throughout(shop.stack.container_id("db")):
            assert_ok(shop.rollback())
        assert shop.version() == "v1" and shop.rows() == ["row 1"]


@pytest.mark.fault(
    "the ledger damaged: the lock file holds garbage", where="recreate playbook, lock", expected=CONVERGES
)
def test_a_damaged_lock_file_is_taken_over_once_its_grace_has_passed_and_the_rollback_finishes(shop, fault_case):
    shop.deploy("v1")
    shop.write("row 1")
    shop.deploy("v2")
    lock = LEDGER / "projects" / shop.stack.name / "lock"
    lock.write_bytes(b'{"holder": "web1", "tok')
    with rows_written_throughout(shop.stack.container_id("db")):
        result = shop.rollback(recreate_lock_grace=3, recreate_lock_timeout=60)
    assert_ok(result)
    fault_case.observed(failure_line(result, "took over the lock", "damaged lock file"))
    assert shop.version() == "v1" and shop.rows() == ["row 1"]
    assert shop.lock() is None and not lock.exists(), "the lock was not released"


# -- the target's image unreachable at preflight ---------------------------------------------------


def image_of_its_own(source, repository, tag, label):
    """source rebuilt with a label (so an image id of its own, which no other test's image shares),
    tagged repository:tag."""
    build = testbed.run(
        ["docker", "build", "-q", "-t", "%s:%s" % (repository, tag), "--label", "fault=" + label, "-"],
        input="FROM %s\n" % source,
    )
    return build.stdout.strip()


@pytest.mark.fault(
    "the target's image {how} (and no longer on the host)", where="recreate playbook, preflight", expected=REFUSED
)
@pytest.mark.parametrize("how", ["deleted from its registry", "behind a registry that does not answer"])
def test_a_target_image_that_cannot_be_pulled_stops_the_rollback_before_anything_stops(
    make_shop, images, tmp_path, how, fault_case
):
    with testbed.private_registry(tmp_path / "registry") as registry:
        repository = registry.address + "/shop-app"
        try:
            image_of_its_own(images["APP_IMAGE"] + ":v1", repository, "v1", tmp_path.name)
            testbed.run(["docker", "tag", images["APP_IMAGE"] + ":v2", repository + ":v2"])
            for tag in ("v1", "v2"):
                testbed.run(["docker", "push", "-q", "%s:%s" % (repository, tag)])
            shop = make_shop(app=repository)
            v1 = shop.deploy("v1")
            shop.write("row 1")
            shop.deploy("v2")
            release = next(r for r in shop.info()["releases"] if r["id"] == v1)
            digest = release["services"]["app"]["repo_digest"]
            assert digest and digest.startswith(repository + "@sha256:"), digest
            testbed.run(["docker", "image", "rm", repository + ":v1"])  # gone from the host
            if how == "deleted from its registry":
                registry.delete("shop-app", digest.split("@")[1])
            else:
                registry.stop()
            before = unchanged_state(shop)
            with rows_written_throughout(shop.stack.container_id("db")):
                result = shop.rollback()
            assert_refused(result, digest)
            fault_case.observed(failure_line(result, "cannot pull image", digest))
            assert "nothing was stopped" in result.stdout.lower(), result.stdout[-4000:]
            assert unchanged_state(shop) == before, "a refused rollback changed the host"
            assert shop.version() == "v2" and shop.rows() == ["row 1"]
        finally:
            testbed.run(["docker", "image", "rm", "-f", repository + ":v1", repository + ":v2"], check=False)
