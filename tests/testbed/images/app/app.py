"""Test web app of the stackops.rollback test bed.

Serves /health, /version (baked in at build time) and /records (rows in PostgreSQL), so tests
can tell versions apart and check that data survives a rollback. Standard library plus
psycopg2 from Debian only.
"""

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "unknown")
DATABASE_URL = os.environ.get("DATABASE_URL", "")
PORT = int(os.environ.get("APP_PORT", "8080"))
# Test knobs: make a version that is broken in a chosen way.
FAIL_HEALTH = os.environ.get("APP_FAIL_HEALTH", "") == "1"
CRASH_ON_START = os.environ.get("APP_CRASH_ON_START", "") == "1"
START_DELAY = float(os.environ.get("APP_START_DELAY", "0"))


def connect():
    import psycopg2

    return psycopg2.connect(DATABASE_URL, connect_timeout=3)


def ensure_schema():
    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS records ("
            " id serial PRIMARY KEY, body text NOT NULL,"
            " version text NOT NULL, created timestamptz NOT NULL DEFAULT now())"
        )


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
                try:
                    with connect() as conn, conn.cursor() as cur:
                        cur.execute("SELECT 1")
                except Exception as exc:
                    return self.reply(503, "database: %s\n" % exc)
            return self.reply(200, "ok %s\n" % VERSION)
        if self.path == "/records":
            with connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT id, body, version FROM records ORDER BY id")
                rows = [{"id": r[0], "body": r[1], "version": r[2]} for r in cur.fetchall()]
            return self.reply(200, json.dumps(rows), "application/json")
        return self.reply(404, "not found\n")

    def do_POST(self):
        if self.path != "/records":
            return self.reply(404, "not found\n")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() or "record"
        with connect() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO records (body, version) VALUES (%s, %s) RETURNING id", (body, VERSION))
            new_id = cur.fetchone()[0]
        return self.reply(201, json.dumps({"id": new_id}), "application/json")


def stop(signum, frame):
    # As PID 1 the default SIGTERM action is "ignore": exit like a real service would.
    print("app %s stopping on signal %d" % (VERSION, signum), flush=True)
    sys.exit(0)


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
                ensure_schema()
                break
            except Exception as exc:
                print("waiting for database (attempt %d): %s" % (attempt + 1, exc), flush=True)
                time.sleep(1)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print("app %s listening on %d" % (VERSION, PORT), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
