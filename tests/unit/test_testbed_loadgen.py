"""The probes' own downtime figure, against which the roles' reported downtime is compared."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testbed"))

from loadgen import Sample, longest_outage


def sample(started, ok=True):
    return Sample(started, started + 0.05, 200 if ok else 502, "v1" if ok else "")


def test_no_failure_is_no_outage():
    assert longest_outage([sample(0.0), sample(0.1)]) == 0.0


def test_the_longest_run_of_failures_counts_to_the_next_answer():
    samples = [sample(0.0), sample(0.1, ok=False), sample(0.2), sample(1.0, ok=False), sample(1.1, ok=False)]
    samples.append(sample(1.6))
    assert longest_outage(samples) == 0.65  # from 1.0 to the answer of the request sent at 1.6


def test_a_request_queued_through_the_outage_does_not_end_it_early():
    # Sent at 0.3 during the outage, held by the port proxy, answered at 1.5 once the service is
    # back; the failures after it (0.4, 0.9) are the same outage, which ends with the answer at 1.05.
    queued = Sample(0.3, 1.5, 200, "v1")
    samples = [sample(0.0), sample(0.1, ok=False), queued, sample(0.4, ok=False), sample(0.9, ok=False)]
    samples.append(sample(1.0))
    assert longest_outage(samples) == 0.95


def test_failures_to_the_end_count_to_the_last_failure_s_end():
    assert longest_outage([sample(0.0), sample(1.0, ok=False), sample(2.0, ok=False)]) == 1.05
