"""Test web app of the stackops.rollback test bed.

Serves /health, /version (baked in at build time) and /records (rows in PostgreSQL or MariaDB), so
tests can tell versions apart and check that data survives a rollback. At start it runs its
migrations (Alembic, migrate.py) like many compose apps do. Each version reads the columns its
schema has: v2 reads records.note, which v2 adds and v3 drops, so v2's code over v3's schema fails
its health check as real code would. Debian packages only (SQLAlchemy, psycopg2, PyMySQL).
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "unknown")
DATABASE_URL = os.environ.get("DATABASE_URL", "")
PORT = int(os.environ.get("APP_PORT", "8080"))
# The newest migration this version's code is written for (0001 v1, 0002 v2, 0003 v3).
SCHEMA_HEAD = os.environ.get("APP_SCHEMA_HEAD", "0001")
READS_NOTE = SCHEMA_HEAD == "0002"
# Test knobs: make a version that is broken in a chosen way.
FAIL_HEALTH = os.environ.get("APP_FAIL_HEALTH", "") == "1"
CRASH_ON_START = os.environ.get("APP_CRASH_ON_START", "") == "1"
START_DELAY = float(os.environ.get("APP_START_DELAY", "0"))
# Serves (and passes its health check) for this many seconds, then exits 3: healthy at the first
# sample, crash-looping a few seconds later under `restart: always`.
CRASH_AFTER = float(os.environ.get("APP_CRASH_AFTER", "0"))
_ENGINE = []


def engine():
    if not _ENGINE:
        import sqlalchemy

        _ENGINE.append(sqlalchemy.create_engine(DATABASE_URL, pool_pre_ping=True, connect_args={"connect_timeout": 3}))
    return _ENGINE[0]


def records_table():
    import sqlalchemy as sa

    columns = [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text),
        sa.Column("version", sa.String(32)),
    ]
    if READS_NOTE:
        columns.append(sa.Column("note", sa.Text))
    return sa.Table("records", sa.MetaData(), *columns)


def read_records(limit=None):
    import sqlalchemy as sa

    table = records_table()
    query = sa.select(table).order_by(table.c.id)
    if limit:
        query = query.limit(limit)
    with engine().connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def insert_record(body):
    values = {"body": body, "version": VERSION}
    if READS_NOTE:
        values["note"] = "written by %s" % VERSION
    with engine().begin() as conn:
        return conn.execute(records_table().insert().values(**values)).inserted_primary_key[0]


def migrate():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import migrate as migrations

    migrations.upgrade(DATABASE_URL)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep container logs quiet: one line per error only
        pass

    def reply(self, status, body, ctype="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", VERSION)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/version":
            return self.reply(200, VERSION + "\n")
        if self.path == "/health":
            if FAIL_HEALTH:
                return self.reply(500, "failing on purpose\n")
            if DATABASE_URL:
                try:  # the columns this version's code reads must be there
                    read_records(limit=1)
                except Exception as exc:
                    return self.reply(503, "database: %s\n" % str(exc).splitlines()[0])
            return self.reply(200, "ok %s\n" % VERSION)
        if self.path == "/records":
            return self.reply(200, json.dumps(read_records()), "application/json")
        return self.reply(404, "not found\n")

    def do_POST(self):
        if self.path != "/records":
            return self.reply(404, "not found\n")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() or "record"
        new_id = insert_record(body)
        return self.reply(201, json.dumps({"id": new_id}), "application/json")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that went away before its answer (a health probe that timed out under load) is
        # no error of the app: socketserver would print a traceback, which log checks read as one.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def stop(signum, frame):
    # As PID 1 the default SIGTERM action is "ignore": exit like a real service would.
    print("app %s stopping on signal %d" % (VERSION, signum), flush=True)
    sys.exit(0)


def crash_now():
    print("app %s exiting on purpose after %s s (APP_CRASH_AFTER)" % (VERSION, CRASH_AFTER), flush=True)
    os._exit(3)


def main():
    signal.signal(signal.SIGTERM, stop)
    print("app %s starting" % VERSION, flush=True)
    if CRASH_ON_START:
        print("FATAL: crashing on start on purpose", flush=True)
        sys.exit(3)
    time.sleep(START_DELAY)
    if DATABASE_URL:
        for attempt in range(60):
            try:
                migrate()
                break
            except Exception as exc:
                print("waiting for database (attempt %d): %s" % (attempt + 1, exc), flush=True)
                time.sleep(1)
    server = Server(("0.0.0.0", PORT), Handler)
    print("app %s listening on %d" % (VERSION, PORT), flush=True)
    if CRASH_AFTER > 0:
        threading.Timer(CRASH_AFTER, crash_now).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
