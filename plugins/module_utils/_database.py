# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Declared databases: the `databases` option (service, engine, database, user, password,
command) and what is done with it inside the service's own container, through the Engine.

The dump client is the database's own (pg_dump, mariadb-dump / mysqldump), so client and server
versions match. Everything runs as an argument list; a password goes to the client in its
environment (PGPASSWORD, MYSQL_PWD), never on a command line, and never into a message.
"""

from __future__ import annotations

import json
import re

from ansible_collections.stackops.rollback.plugins.module_utils._docker import SERVICE_LABEL, EngineError
from ansible_collections.stackops.rollback.plugins.module_utils._schema import (
    ENGINES,
    migration_state,
    migration_tables,
    normalize,
    parse,
    sha256_text,
)

# The options of one entry of `databases` (doc fragment stackops.rollback.databases).
DATABASE_OPTIONS = dict(
    service=dict(type="str", required=True),
    engine=dict(type="str", required=True, choices=list(ENGINES)),
    database=dict(type="str"),
    user=dict(type="str"),
    password=dict(type="str", no_log=True),
    command=dict(type="list", elements="str"),
)
DATABASES_ARG = dict(type="list", elements="dict", options=DATABASE_OPTIONS, default=[])
DEFAULT_USERS = {"postgres": "postgres", "mariadb": "root", "mysql": "root"}
# A fixed key: PostgreSQL 17.6, 16.10 and 15.14 write a random \restrict line into plain dumps otherwise.
RESTRICT_KEY = "stackopsrollback"
DUMP_TIMEOUT = 600
MASK = "********"


class DatabaseError(Exception):
    """A declared database cannot be read; the message says which, why and what to do (never a password)."""


def key_of(decl):
    """How a database is named in records and reports: service/database."""
    return "%s/%s" % (decl["service"], decl.get("database") or decl["engine"])


def check_declarations(declarations, services=None):
    """Refuse incomplete or unknown entries before anything runs; returns them with defaults filled in."""
    checked, seen = [], set()
    for number, decl in enumerate(declarations or [], 1):
        where = "databases[%d] (service %s)" % (number, decl.get("service"))
        if decl["engine"] == "command":
            if not decl.get("command"):
                raise DatabaseError("%s: engine command needs command, the argv that prints the schema" % where)
        elif not decl.get("database"):
            raise DatabaseError("%s: engine %s needs database, the database's name" % (where, decl["engine"]))
        if services is not None and decl["service"] not in services:
            raise DatabaseError(
                "%s: no service %s in the project (its services: %s); name the compose service the database runs in"
                % (where, decl["service"], ", ".join(sorted(services)) or "none")
            )
        decl = dict(decl, user=decl.get("user") or DEFAULT_USERS.get(decl["engine"]))
        if key_of(decl) in seen:
            raise DatabaseError("%s: %s is declared twice" % (where, key_of(decl)))
        seen.add(key_of(decl))
        checked.append(decl)
    return checked


def quote_ident(engine, name):
    if engine == "postgres":  # schema.table: the schema's own tables are named without "public."
        return ".".join('"%s"' % p.replace('"', '""') for p in name.split("."))
    return "`%s`" % name.replace("`", "``")  # a MariaDB table of the declared database, dots and all


def quote_literal(engine, text):
    text = text.replace("'", "''")
    if engine != "postgres":
        text = text.replace("\\", "\\\\")
    return "'%s'" % text


class Databases:
    """The declared databases of one compose project, reached in their services' containers."""

    def __init__(self, engine, project, declarations):
        self.engine = engine
        self.project = project
        self._containers = None
        self.declarations = check_declarations(declarations, set(self.containers()))

    def containers(self):
        """{service: its first running container} of the project."""
        if self._containers is None:
            found = {}
            for container in self.engine.project_containers(self.project):
                name = (container.labels or {}).get(SERVICE_LABEL)
                if name and (name not in found or container.status == "running"):
                    found[name] = container
            self._containers = found
        return self._containers

    def container(self, service, what):
        container = self.containers().get(service)
        if container is None or container.status != "running":
            raise DatabaseError(
                "service %s of project %s has no running container: %s runs in it. Start it (docker compose up -d %s); "
                "nothing was changed" % (service, self.project, what, service)
            )
        return container

    # -- running the engine's own clients ----------------------------------------------------
    def _client(self, decl, tool):
        """(argv, environment) of the engine's client `tool` (dump or sql) for a declaration."""
        env, engine, user = {}, decl["engine"], decl["user"]
        if engine == "postgres":
            argv = {
                "dump": ["pg_dump", "--schema-only", "--no-owner", "--no-privileges"],
                # One repeatable-read snapshot: consistent while the database serves. Owners and
                # grants are kept: an app logging in as its own user must find its tables its own.
                "data": ["pg_dump", "--format=plain"],
                "sql": ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"],
            }[tool]
            argv += ["-w", "-U", user, "-d", decl["database"]]
            if decl.get("password"):
                env["PGPASSWORD"] = decl["password"]
                argv += ["-h", "127.0.0.1"]  # a password is for the network path; the socket may trust
        else:
            if tool == "data":
                # --single-transaction: one consistent InnoDB snapshot, no table locked while it runs.
                argv = [
                    "mariadb-dump" if engine == "mariadb" else "mysqldump",
                    "--single-transaction",
                    "--quick",
                    "--routines",
                    "--triggers",
                    "--hex-blob",
                    "--add-locks",
                    "--skip-dump-date",
                    "--default-character-set=utf8mb4",
                ]
            elif tool == "dump":
                argv = [
                    "mariadb-dump" if engine == "mariadb" else "mysqldump",
                    "--no-data",
                    "--skip-dump-date",
                    "--skip-comments",
                    "--compact",
                    "--skip-opt",
                    "--create-options",
                    "--triggers",
                ]
            else:
                argv = ["mariadb" if engine == "mariadb" else "mysql", "-N", "-B", "-r"]
            argv += ["-u", user]
            if decl.get("password"):
                env["MYSQL_PWD"] = decl["password"]
            argv += [decl["database"]]
        return argv, env

    def _run(self, decl, argv, env, what, timeout=DUMP_TIMEOUT):
        container = self.container(decl["service"], what)
        try:
            rc, out, err = self.engine.exec(container, argv, timeout=timeout, environment=env or None)
        except EngineError as exc:
            raise DatabaseError(
                "%s of %s failed: %s. Nothing was changed" % (what, key_of(decl), self.mask(decl, exc))
            ) from exc
        self.check_exit(decl, container, argv, rc, out, err, what)
        return out

    def check_exit(self, decl, container, argv, rc, out, err, what):
        """A client's exit as a DatabaseError naming the cause (a missing client, a wrong field), or nothing."""
        if rc in (126, 127) or "executable file not found" in (out + err):
            raise DatabaseError(
                "%s of %s: the container of service %s has no %s (image %s). The dump runs with the database's own "
                "client so its version matches the server's: use an image that has it, or engine: command with an argv "
                "that prints the schema. Nothing was changed"
                % (what, key_of(decl), decl["service"], argv[0], container.attrs.get("Config", {}).get("Image"))
            )
        if rc != 0:
            raise DatabaseError(
                "%s of %s failed: %s. Nothing was changed" % (what, key_of(decl), self.explain(decl, err or out))
            )

    def stream(self, decl, tool, what, stdin=None):
        """(the running client as an Engine ExecStream, its container, its argv): `data` dumps, `sql` loads stdin."""
        container = self.container(decl["service"], what)
        argv, env = self._client(decl, tool)
        try:
            return self.engine.exec_stream(container, argv, environment=env or None, stdin=stdin), container, argv
        except EngineError as exc:
            raise DatabaseError(
                "%s of %s failed: %s. Nothing was changed" % (what, key_of(decl), self.mask(decl, exc))
            ) from exc

    @staticmethod
    def mask(decl, text):
        text = str(text)
        return text.replace(decl["password"], MASK) if decl.get("password") else text

    def explain(self, decl, text):
        """The client's own error, with what it means for the declaration (which field is wrong)."""
        text = self.mask(decl, text).strip()
        first = next(
            (line for line in text.splitlines() if re.search(r"error|fatal|denied|unknown", line, re.I)),
            text.splitlines()[0] if text else "no output",
        )
        hints = (
            (r"password authentication failed|using password: YES", "wrong password for user %s" % decl["user"]),
            (
                r'role ".*" does not exist|Access denied for user',
                "user %s is unknown or refused (check user and password)" % decl["user"],
            ),
            (r'database ".*" does not exist|Unknown database', "database %s does not exist" % decl.get("database")),
            (r"no password supplied|using password: NO", "user %s needs a password (set password)" % decl["user"]),
        )
        for pattern, hint in hints:
            if re.search(pattern, text, re.I):
                return "%s (%s)" % (hint, first.strip())
        return first.strip()[:500]

    def sql(self, decl, statement, what):
        argv, env = self._client(decl, "sql")
        if decl["engine"] == "postgres":
            argv = [*argv, "-c", statement]
        else:
            argv = [*argv[:-1], "-e", statement, argv[-1]]
        return self._run(decl, argv, env, what)

    # -- what the rest of the collection asks -------------------------------------------------
    def dump(self, decl):
        """The normalized schema text of a declared database."""
        if decl["engine"] == "command":
            return normalize("command", self._run(decl, list(decl["command"]), {}, "the schema command"))
        argv, env = self._client(decl, "dump")
        if decl["engine"] == "postgres":
            try:
                return normalize(
                    "postgres", self._run(decl, [*argv, "--restrict-key=" + RESTRICT_KEY], env, "the schema dump")
                )
            except DatabaseError as exc:
                if "restrict-key" not in str(exc):  # a client older than 17.6 / 16.10 / 15.14 lacks the option
                    raise
        return normalize(decl["engine"], self._run(decl, argv, env, "the schema dump"))

    def migrations(self, decl, schema):
        """{table: {tool, versions, half_applied}} of the migration tables a schema has."""
        found = migration_tables(schema)
        if not found or decl["engine"] == "command":
            return {}
        engine = decl["engine"]
        if engine == "postgres":
            selects = ", ".join(
                "%s, (SELECT coalesce(json_agg(t), '[]'::json) FROM %s t)"  # noqa: S608 - names from the database's own dump, quoted
                % (quote_literal(engine, name), quote_ident(engine, name))
                for name, _spec in found
            )
            statement = "SELECT json_build_object(%s)" % selects
        else:
            selects = []
            for name, _spec in found:
                columns = ", ".join(
                    "%s, %s" % (quote_literal(engine, c), quote_ident(engine, c))
                    for c in schema["tables"][name]["columns"]
                )
                selects.append(
                    "%s, (SELECT coalesce(JSON_ARRAYAGG(JSON_OBJECT(%s)), JSON_ARRAY()) FROM %s)"  # noqa: S608 - names from the database's own dump, quoted
                    % (quote_literal(engine, name), columns, quote_ident(engine, name))
                )
            statement = "SELECT JSON_OBJECT(%s)" % ", ".join(selects)
        out = self.sql(decl, statement, "reading the migration tables")
        try:
            rows = json.loads(out.strip() or "{}")
        except ValueError as exc:
            raise DatabaseError("the migration tables of %s gave no JSON: %s" % (key_of(decl), exc)) from exc
        result = {}
        for name, spec in found:
            value = rows.get(name) or []
            value = json.loads(value) if isinstance(value, str) else value
            versions, half = migration_state(spec, value)
            result[name] = {"tool": spec[3], "versions": versions, "half_applied": half}
        return result

    def record(self, decl):
        """What is recorded of a database at a deploy (and dumped live for a verdict)."""
        text = self.dump(decl)
        schema = parse(decl["engine"], text)
        return {
            "service": decl["service"],
            "engine": decl["engine"],
            "database": decl.get("database"),
            "schema": text,
            "sha256": sha256_text(text),
            "tables": len(schema["tables"]),
            "migrations": self.migrations(decl, schema),
        }

    def records(self):
        return {key_of(decl): self.record(decl) for decl in self.declarations}

    def row_counts(self, decl, text=None):
        """{table: rows} of every table of a database (exact counts, one query)."""
        if decl["engine"] == "command":
            return {}
        schema = parse(decl["engine"], text if text is not None else self.dump(decl))
        names = sorted(schema["tables"])
        if not names:
            return {}
        engine = decl["engine"]
        statement = " UNION ALL ".join(
            "SELECT %s, count(*) FROM %s" % (quote_literal(engine, n), quote_ident(engine, n))  # noqa: S608 - quoted
            for n in names
        )
        counts = {}
        for line in self.sql(decl, statement, "counting rows").splitlines():
            if "\t" in line:
                name, _tab, count = line.rpartition("\t")
                counts[name] = int(count)
        return counts

    def volumes(self, decl):
        """Names of the volumes mounted in a database's container."""
        container = self.container(decl["service"], "finding its volumes")
        return [m["Name"] for m in container.attrs.get("Mounts") or [] if m.get("Type") == "volume"]

    def run_in_service(self, service, argv, what, timeout=DUMP_TIMEOUT):
        """Run an argv in a service's running container: (rc, output)."""
        container = self.container(service, what)
        rc, out, err = self.engine.exec(container, list(argv), timeout=timeout)
        return rc, (out + err).strip()
