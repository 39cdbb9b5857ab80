"""A client that writes numbered rows into a PostgreSQL database all through a rollback.

Each row is acknowledged when the database returns its number from INSERT ... RETURNING, so
`acknowledged` holds exactly the rows the database promised to keep. A check after the rollback
compares them with the rows the table holds: a row acknowledged and gone is lost data. When the
database goes away for a moment (a restart, a restore), the client opens a new session and goes
on. Bounded: one row per `interval`, at most `max_rows`, for at most `max_seconds`.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time

import faults
import testbed

TABLE = "numbered_writes"


class RowWriter:
    def __init__(
        self, container, database="shop", user="postgres", interval=0.04, max_rows=3000, max_seconds=180, docker=None
    ):
        self.container = container
        # `docker`: how to reach the container's engine (a Docker-in-Docker host's: DockerHost.docker).
        docker = list(docker or ["docker"])
        self.argv = [*docker, "exec", "-i", container, "psql", "-X", "-q", "-A", "-t", "-U", user, "-d", database]
        self.interval = interval
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.acknowledged = set()
        self.sent = 0
        self.sessions = 0
        self.during = None
        self.last_error = ""  # what the last session that ended said on stderr (for a failure's message)
        self.first_ack_at = None
        self.last_ack_at = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def create_table(self):
        sql = "CREATE TABLE IF NOT EXISTS %s (n integer PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())" % TABLE
        subprocess.run([*self.argv, "-c", sql], check=True, capture_output=True, timeout=30)

    def rows(self):
        """The numbers the table holds now."""
        out = subprocess.run(
            [*self.argv, "-c", "SELECT n FROM %s ORDER BY n" % TABLE], check=True, capture_output=True, timeout=30
        ).stdout.decode()
        return {int(line) for line in out.split() if line.strip().isdigit()}

    def start(self):
        self.create_table()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)

    def lost(self):
        """Rows the database acknowledged that it no longer holds."""
        return sorted(self.acknowledged - self.rows())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _read_acks(self, stream):
        for line in stream:
            text = line.decode(errors="replace").strip()
            if text.isdigit():
                now = time.monotonic()
                self.acknowledged.add(int(text))
                self.first_ack_at = self.first_ack_at or now
                self.last_ack_at = now

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline and self.sent < self.max_rows:
            session = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.sessions += 1
            reader = threading.Thread(target=self._read_acks, args=(session.stdout,), daemon=True)
            reader.start()
            try:
                while not self._stop.is_set() and time.monotonic() < deadline and self.sent < self.max_rows:
                    if session.poll() is not None:
                        break
                    self.sent += 1
                    statement = "INSERT INTO %s (n) VALUES (%d) RETURNING n;\n" % (TABLE, self.sent)
                    session.stdin.write(statement.encode())
                    session.stdin.flush()
                    self._stop.wait(self.interval)
            except OSError:
                pass  # the session ended under us (BrokenPipeError): the loop opens a new one
            finally:
                with contextlib.suppress(OSError):
                    session.stdin.close()
                try:
                    session.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    session.kill()
                    session.wait()
                reader.join(timeout=10)
                with contextlib.suppress(OSError, ValueError):
                    self.last_error = session.stderr.read().decode(errors="replace").strip()[-300:] or self.last_error
                    session.stderr.close()
            # The database is away (stopped, restarting): try a new session shortly.
            self._stop.wait(0.2)


@contextlib.contextmanager
def rows_written_throughout(container, at_least=50, **options):
    """A RowWriter around the block, with a row every 40 ms: some rows acknowledged before it
    runs and after it ends, at least `at_least` while it runs (`writer.during` counts them), and on
    exit no acknowledged row missing from the table."""
    with RowWriter(container, **options) as writer:
        testbed.wait_for(lambda: len(writer.acknowledged) >= 10, 30, "the writer's first rows")
        before = len(writer.acknowledged)
        yield writer
        writer.during = len(writer.acknowledged) - before
        after = before + writer.during + 10
        try:
            testbed.wait_for(lambda: len(writer.acknowledged) >= after, 60, "the writer's rows after the block")
        except AssertionError as exc:
            raise AssertionError(
                "%s (%d sessions, %d rows sent; the last session said: %s)"
                % (exc, writer.sessions, writer.sent, writer.last_error or "-")
            ) from None
    lost = writer.lost()
    faults.rows_seen(len(writer.acknowledged), len(lost))
    assert lost == [], "acknowledged rows lost: %d of %d (%s...)" % (len(lost), len(writer.acknowledged), lost[:10])
    assert writer.during >= at_least, "too few rows written during the block to tell: %d" % writer.during
