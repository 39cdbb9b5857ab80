"""A bounded load generator for the proxy tests and benchmarks: 127.0.0.1 only.

Requests go out at a fixed rate, each on a new connection (so a reload that closes idle
keep-alive connections is not counted against the proxy), until stop() or the limits on
count and time. Every answer is recorded with its start and end time and its body.

Nothing is retried: a connection closed or reset before any byte of an answer is a failed
request (counted in `failed`, and apart in `resets`), as is any HTTP error or time-out. (A Caddy
reload resets a queued connection now and then unless net.ipv4.tcp_migrate_req=1 in Caddy's
network namespace: the test proxies set it, and the caddy_upstream benchmark measures both.)
"""

from __future__ import annotations

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit


class ResetBeforeAnswer(OSError):
    """The connection was closed or reset before any byte of an answer."""


class Sample:
    __slots__ = ("body", "ended", "error", "resets", "started", "status")

    def __init__(self, started, ended, status, body, error=None, resets=0):
        self.started = started
        self.ended = ended
        self.status = status
        self.body = body
        self.error = error
        self.resets = resets

    @property
    def ok(self):
        return self.status == 200 and self.error is None


class LoadGenerator:
    def __init__(self, url, rate=120, max_requests=6000, max_seconds=120, timeout=5.0, workers=32):
        parts = urlsplit(url)
        if parts.hostname != "127.0.0.1":
            raise ValueError("test traffic goes to 127.0.0.1 only, not %r" % parts.hostname)
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path or "/"
        self.rate, self.max_requests, self.max_seconds = rate, max_requests, max_seconds
        self.timeout = timeout
        self.samples = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._thread = threading.Thread(target=self._schedule, daemon=True)

    def _attempt(self):
        """(status, body) or raise: ResetBeforeAnswer when the connection died without an answer."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path, headers={"Connection": "close"})
            try:
                response = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
                raise ResetBeforeAnswer("%s: %s" % (exc.__class__.__name__, exc)) from exc
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def _one(self):
        started = time.monotonic()
        try:
            status, body = self._attempt()
            sample = Sample(started, time.monotonic(), status, body)
        except ResetBeforeAnswer as exc:
            sample = Sample(started, time.monotonic(), 0, "", str(exc), resets=1)
        except OSError as exc:
            sample = Sample(started, time.monotonic(), 0, "", "%s: %s" % (exc.__class__.__name__, exc))
        with self._lock:
            self.samples.append(sample)

    def _schedule(self):
        begin = time.monotonic()
        sent = 0
        while not self._stop.is_set() and sent < self.max_requests:
            due = begin + sent / self.rate
            now = time.monotonic()
            if now - begin > self.max_seconds:
                break
            if due > now:
                time.sleep(due - now)
            self._pool.submit(self._one)
            sent += 1

    def start(self):
        self._thread.start()
        return self

    def wait_for_samples(self, count, within):
        """Keep the load on until `count` answers are in, for at most `within` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and len(self.samples) < count:
            time.sleep(0.2)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        with self._lock:
            return sorted(self.samples, key=lambda s: s.started)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def summarize(samples):
    failed = [s for s in samples if not s.ok]
    span = (samples[-1].started - samples[0].started) if len(samples) > 1 else 0.0
    return {
        "requests": len(samples),
        "failed": len(failed),
        "resets": sum(s.resets for s in samples),
        "seconds": round(span, 2),
        "rate": round(len(samples) / span, 1) if span else 0.0,
        "errors": sorted({s.error or "HTTP %d" % s.status for s in failed})[:5],
    }


def longest_outage(samples):
    """Seconds of the longest outage the probes saw: from a failed request's start until a request
    sent at or after it was answered (its answer's arrival), or, with none answered, the last
    failure's end; 0.0 when none failed. A request sent during the outage that waits until the
    service is back (queued by the engine's port proxy) is answered late, not early: it does not
    end the outage before the service answers."""
    ordered = sorted(samples, key=lambda x: x.started)
    longest, index = 0.0, 0
    while index < len(ordered):
        if ordered[index].ok:
            index += 1
            continue
        begin = ordered[index].started
        answers = [s.ended for s in ordered[index:] if s.ok]
        end = min(answers) if answers else max(s.ended for s in ordered[index:])
        longest = max(longest, end - begin)
        while index < len(ordered) and (ordered[index].ok or ordered[index].started <= end):
            index += 1
    return round(longest, 3)


def run_under_probes(url, action, rate=50, margin=1.0, max_seconds=150):
    """action() with `rate` requests/s on url from `margin` s before it to `margin` s after it
    (bounded: max_seconds in all); returns (its result, the samples)."""
    load = LoadGenerator(url, rate=rate, max_requests=int(rate * max_seconds), max_seconds=max_seconds).start()
    try:
        time.sleep(margin)
        result = action()
        time.sleep(margin)
    finally:
        samples = load.stop()
    return result, samples
