"""The test bed removes what a killed run left behind, and only that (tests/testbed/leftovers.py).

Run on names of this test's own (a prefix no other test uses), so that the tests running beside
it keep theirs.
"""

from __future__ import annotations

import leftovers
import testbed

LEFTOVER_COMPOSE = """\
services:
  web:
    image: {busybox}
    command: ["sleep", "600"]
    volumes:
      - data:/data
volumes:
  data:
"""


def test_a_killed_runs_project_container_volume_network_image_and_ledger_entry_are_removed(
    compose_stack, images, tmp_path
):
    prefix = testbed.engine_name("st-lo") + "-"
    kept = testbed.engine_name("st-kept")
    # A compose project as a killed test leaves it: running, with its volume and network.
    stack = compose_stack(LEFTOVER_COMPOSE.format(busybox=images["BUSYBOX_IMAGE"]), prefix=prefix + "shop")
    stack.up(wait=False)
    testbed.run(["docker", "run", "-d", "--name", prefix + "plain", images["BUSYBOX_IMAGE"], "sleep", "600"])
    testbed.run(["docker", "volume", "create", prefix + "vol"])
    repo = "%s/stackops/app-leftover-%s" % (images["REGISTRY"], prefix.strip("-"))
    testbed.run(["docker", "tag", images["BUSYBOX_IMAGE"], repo + ":x"])
    ledger = tmp_path / "ledger"
    (ledger / (prefix + "shop")).mkdir(parents=True)
    (ledger / kept).mkdir()
    testbed.run(["docker", "run", "-d", "--name", kept, images["BUSYBOX_IMAGE"], "sleep", "600"])
    try:
        removed = leftovers.remove_leftovers((prefix,), ledger, (repo,))

        assert removed["containers"] == sorted([stack.name + "-web-1", prefix + "plain"]), removed
        assert sorted(removed["volumes"]) == sorted([stack.volume("data"), prefix + "vol"]), removed
        assert removed["networks"] == [stack.name + "_default"], removed
        assert removed["images"] == [repo + ":x"], removed
        assert removed["ledger entries"] == [prefix + "shop"], removed
        names = testbed.run(["docker", "ps", "-a", "--format", "{{.Names}}"]).stdout.split()
        assert not [n for n in names if n.startswith(prefix)], names
        assert not [v for v in testbed.run(["docker", "volume", "ls", "-q"]).stdout.split() if v.startswith(prefix)]
        # What does not carry the prefix stays.
        assert kept in names
        assert sorted(p.name for p in ledger.iterdir()) == [kept]
        assert leftovers.remove_leftovers((prefix,), ledger, (repo,)) == {
            "containers": [],
            "volumes": [],
            "networks": [],
            "images": [],
            "ledger entries": [],
        }
    finally:
        testbed.run(["docker", "rm", "-f", kept, prefix + "plain"], check=False)
        testbed.run(["docker", "image", "rm", repo + ":x"], check=False)
