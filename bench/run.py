"""`make bench`: run every bench/bench_*.py (or those named on the command line) in turn."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv):
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests" / "testbed"))
    names = argv or sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))
    failed = []
    for name in names:
        print("==== bench %s ====" % name, flush=True)
        try:
            runpy.run_path(str(HERE / ("bench_%s.py" % name)), run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                failed.append(name)
        except Exception as exc:
            print("bench %s failed: %r" % (name, exc), flush=True)
            failed.append(name)
    if failed:
        print("failed benchmarks: %s" % ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
