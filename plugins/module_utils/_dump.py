# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Online dumps of the declared databases, as stackops.rollback.database_backup makes them.

The database never stops: its own client dumps it while it serves, from one snapshot
(pg_dump's repeatable-read transaction, mariadb-dump --single-transaction). The dump streams
from the container through a row counter into an ArchiveWriter (temporary file, fsync, read
back, rename), and its manifest records the rows of every table as the dump holds them.

A restore first verifies the archive (sha256, then the dump is read through and its rows
counted again), writes a safety dump of the current data, then loads the archive into the
emptied database and proves the row count of every table against the manifest where nothing
else can write: PostgreSQL loads in one transaction whose last statement checks the counts (a
mismatch rolls it all back: nothing changed); MariaDB counts each table under the write lock
the dump itself takes, and a mismatch puts the safety dump back.

RowCounter and the load-stream builders are pure; DatabaseDumps does the engine work.
"""

from __future__ import annotations

import os
import platform
import re
import time

from ansible_collections.stackops.rollback.plugins.module_utils._archive import (
    ArchiveError,
    ArchiveWriter,
    archive_name,
    choose_compression,
    compression_of,
    decompressed_chunks,
    file_sha256,
    manifest_path,
    prepare_dir,
    prune,
    read_manifest,
    utc_stamp,
)
from ansible_collections.stackops.rollback.plugins.module_utils._database import (
    DatabaseError,
    Databases,
    key_of,
    quote_ident,
)
from ansible_collections.stackops.rollback.plugins.module_utils._schema import qualified

DUMP_ENGINES = ("postgres", "mariadb", "mysql")
# The last line each client writes: a dump without it stopped half-way.
COMPLETE = {
    "postgres": b"-- PostgreSQL database dump complete",
    "mariadb": b"-- Dump completed",
    "mysql": b"-- Dump completed",
}
ROWS_TAG = "stackops-rows"
_COPY = re.compile(rb"^COPY (.+?) (?:\(.*\) )?FROM stdin;$")
# A column list comes with invisible or system-versioned columns.
_INSERT = re.compile(rb"INSERT INTO (`(?:[^`]|``)+`)(?: \((?:`(?:[^`]|``)*`(?:, ?)?)*\))? VALUES")
_LOCK = re.compile(rb"^LOCK TABLES (`(?:[^`]|``)+`) WRITE;$")
# A quoted SQL string of a MariaDB dump (backslash escapes), written so the regex engine does the loop.
_QUOTED = re.compile(rb"'[^'\\]*(?:\\.[^'\\]*)*'")
_LOCKS = re.compile(rb"^LOCK TABLES (`(?:[^`]|``)+`) WRITE;$|^UNLOCK TABLES;$", re.M)


def dump_name(decl):
    """The file-name stem of a database's dumps: service-database."""
    return key_of(decl).replace("/", "-")


class RowCounter:
    """Counts the rows of each table of a dump as it streams by; notes whether the dump ended.

    PostgreSQL: the lines of each `COPY ... FROM stdin;` block up to its `\\.`. MariaDB: the
    value tuples of the `INSERT INTO` statements between a table's `LOCK TABLES ... WRITE;` and
    `UNLOCK TABLES;` (where mariadb-dump writes its rows, and nowhere else: a trigger's INSERT is
    not data), quoted strings left out. `relations` keeps each table's name as the dump writes
    it, for the checks of a load. Linear in the dump's size, however long its lines.
    """

    def __init__(self, engine):
        self.engine = engine
        self.rows = {}
        self.relations = {}
        self.complete = False
        self.large_objects = 0
        self.bytes = 0
        self._parts = []
        self._copying = None
        self._locked = None
        self._inserting = None

    def _table(self, raw):
        raw = raw.decode("utf-8", "replace")
        name = qualified(raw, self.engine)
        self.relations.setdefault(name, raw)
        self.rows.setdefault(name, 0)
        return name

    def _line(self, line):
        if line.startswith(b"-- "):
            if line.startswith(COMPLETE[self.engine]):
                self.complete = True
            return
        if self.engine == "postgres":
            match = _COPY.match(line)
            if match:
                self._copying = self._table(match.group(1))
            elif line.startswith(b"SELECT pg_catalog.lo_create("):
                self.large_objects += 1
            return
        match = _LOCK.match(line)
        if match:
            self._locked = self._table(match.group(1))
        elif line == b"UNLOCK TABLES;":
            self._locked = None

    def feed(self, chunk):
        self.bytes += len(chunk)
        if b"\n" not in chunk:  # a long line: keep its pieces, join once it ends
            self._parts.append(chunk)
            return
        buffer, pos = b"".join([*self._parts, chunk]), 0
        self._parts = []
        while pos < len(buffer):
            if self._inserting is not None:
                # Values hold no parenthesis outside quoted strings, and a string holds no raw
                # newline (the dump writes \n): with strings left out, each "(" opens a row, and
                # ");" at a line's end closes the statement, one row a line or many.
                end = buffer.find(b");\n", pos)
                if end >= 0:
                    self.rows[self._inserting] += _QUOTED.sub(b"", buffer[pos : end + 1]).count(b"(")
                    self._inserting, pos = None, end + 3
                    continue
                last = buffer.rfind(b"\n", pos)
                if last >= 0:
                    self.rows[self._inserting] += _QUOTED.sub(b"", buffer[pos : last + 1]).count(b"(")
                    pos = last + 1
                break
            if self._copying is not None:
                # Rows are lines; a backslash in data is written \\, so a line `\.` only ends the block.
                if buffer.startswith(b"\\.\n", pos):
                    self._copying, pos = None, pos + 3
                    continue
                end = buffer.find(b"\n\\.\n", pos)
                if end >= 0:
                    self.rows[self._copying] += buffer.count(b"\n", pos, end + 1)
                    self._copying, pos = None, end + 4
                    continue
                last = buffer.rfind(b"\n", pos)
                if last >= 0:
                    self.rows[self._copying] += buffer.count(b"\n", pos, last + 1)
                    pos = last + 1
                break
            end = buffer.find(b"\n", pos)
            if end < 0:
                break
            if self._locked is not None:
                match = _INSERT.match(buffer, pos, end)
                if match and qualified(match.group(1).decode("utf-8", "replace"), self.engine) == self._locked:
                    self._inserting, pos = self._locked, match.end()
                    continue
            self._line(buffer[pos:end])
            pos = end + 1
        if pos < len(buffer):
            self._parts = [buffer[pos:]]

    def close(self):
        tail = b"".join(self._parts)
        self._parts = []
        if tail:
            self._line(tail.rstrip(b"\n"))
        return self


def _outside_copy(chunks, rewrite):
    """The stream line by line, each line outside COPY data passed through rewrite(line)."""
    copying, pending = False, b""
    for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        out = []
        for line in lines:
            if copying:
                copying = line != b"\\."
            else:
                copying = bool(_COPY.match(line))
                line = rewrite(line)
            out.append(line + b"\n")
        yield b"".join(out)
    if pending:
        yield pending if copying else rewrite(pending)


def _large_object_transactions(line):
    # pg_dump writes large objects between its own BEGIN; and COMMIT;, which would end ours.
    return {
        b"BEGIN;": b"SAVEPOINT stackops_large_objects;",
        b"COMMIT;": b"RELEASE SAVEPOINT stackops_large_objects;",
    }.get(line, line)


def postgres_load(chunks, relations, rows, large_objects=0, tag=None):
    """The stream psql loads: one transaction that empties the database, loads the dump, and
    checks every table's row count before COMMIT (a mismatch raises: nothing is committed).

    An explicit BEGIN/COMMIT, not --single-transaction: a stream cut short never reaches
    COMMIT, and the server rolls the whole load back.
    """
    tag = (tag or "stackops_%s" % os.urandom(6).hex()).encode()  # a dollar quote no table name ends
    yield (
        b"SET client_min_messages = warning;\n"
        b"BEGIN;\n"
        b"SELECT count(lo_unlink(oid)) FROM pg_largeobject_metadata;\n"
        b"DO $%s$ DECLARE s name; BEGIN\n"
        b"  FOR s IN SELECT nspname FROM pg_namespace\n"
        b"           WHERE nspname NOT LIKE 'pg\\_%%' AND nspname <> 'information_schema' LOOP\n"
        b"    EXECUTE format('DROP SCHEMA %%I CASCADE', s);\n"
        b"  END LOOP;\n"
        b"END $%s$;\n"
        # Schema public as initdb makes it, as pg_dump writes only what differs from that: owned
        # by pg_database_owner with USAGE for all from PostgreSQL 15 on; before (the role
        # pg_database_owner came in 14), owned by the loading user with CREATE and USAGE for all.
        b"DO $%s$ BEGIN\n"
        b"  IF current_setting('server_version_num')::int >= 150000 THEN\n"
        b"    EXECUTE 'CREATE SCHEMA public AUTHORIZATION pg_database_owner';\n"
        b"    EXECUTE 'GRANT USAGE ON SCHEMA public TO PUBLIC';\n"
        b"  ELSE\n"
        b"    EXECUTE 'CREATE SCHEMA public';\n"
        b"    EXECUTE 'GRANT ALL ON SCHEMA public TO PUBLIC';\n"
        b"  END IF;\n"
        b"END $%s$;\n" % (tag, tag, tag, tag)
    )
    if large_objects:
        chunks = _outside_copy(chunks, _large_object_transactions)
    yield from chunks
    checks = [
        # ONLY: a parent's COPY holds its own rows, count(*) would add its children's.
        "  SELECT count(*) INTO n FROM ONLY %s;\n"  # noqa: S608 - the dump's own (quoted) relation names
        "  IF n <> %d THEN\n"
        "    RAISE EXCEPTION '%s: table %% has %% rows after the load, the dump %%', %s, n, %d;\n"
        "  END IF;\n" % (relations[name], rows[name], ROWS_TAG, "'%s'" % name.replace("'", "''"), rows[name])
        for name in sorted(rows)
    ]
    yield (
        "\nDO $%s$ DECLARE n bigint; BEGIN\n%s  NULL;\nEND $%s$;\nCOMMIT;\n"
        % (tag.decode(), "".join(checks), tag.decode())
    ).encode()


def mariadb_load(chunks, tables):
    """The stream the mariadb client loads: the database emptied, the dump, and the row count of
    each table read under the write lock the dump takes for its rows (nothing else writes there)."""
    drops = "".join("DROP TABLE IF EXISTS %s;\n" % quote_ident("mariadb", t) for t in tables)
    yield ("SET FOREIGN_KEY_CHECKS=0;\n%sSET FOREIGN_KEY_CHECKS=1;\n" % drops).encode()
    pending, current = b"", None
    for chunk in chunks:
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        head, pending = data[:cut], data[cut:]
        pieces, start = [], 0
        for match in _LOCKS.finditer(head):
            if match.group(1):
                current = match.group(1)
            elif current is not None:
                pieces.append(head[start : match.start()])
                pieces.append(b"SELECT '%s', %s, COUNT(*) FROM %s;\n" % (ROWS_TAG.encode(), _literal(current), current))
                start, current = match.start(), None
        pieces.append(head[start:])
        yield b"".join(pieces)
    if pending:
        yield pending


def _literal(quoted):
    name = quoted[1:-1].replace(b"``", b"`")
    return b"'" + name.replace(b"\\", b"\\\\").replace(b"'", b"''") + b"'"


def counted_rows(output):
    """{table: rows} from the `stackops-rows <table> <n>` lines a MariaDB load prints."""
    counts = {}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == ROWS_TAG:
            counts[parts[1]] = int(parts[2])
    return counts


def row_differences(expected, actual):
    return [
        "%s: %s rows, the dump %d" % (name, actual.get(name, "no"), rows)
        for name, rows in sorted(expected.items())
        if actual.get(name) != rows
    ] + ["%s: %d rows, not in the dump" % (name, rows) for name, rows in sorted(actual.items()) if name not in expected]


class DatabaseDumps:
    """Backup, restore and verify of the declared databases' online dumps."""

    def __init__(self, module, engine, project=None, declarations=None, databases=None):
        """`databases`, a Databases already built by the caller, stands for project and declarations."""
        self.module = module
        self.params = module.params
        self.engine = engine
        self.project = project
        self.declarations = databases.declarations if databases else declarations
        self.zstd = module.get_bin_path("zstd")
        self._databases = databases

    @property
    def databases(self):
        """The declared databases, checked, found in the project (not needed to verify an archive)."""
        if self._databases is None:
            self._databases = Databases(self.engine, self.project, self.declarations)
        return self._databases

    def check_engines(self):
        for decl in self.databases.declarations:
            if decl["engine"] not in DUMP_ENGINES:
                raise DatabaseError(
                    "databases: %s has engine %s, which has no online dump; declare engine postgres, mariadb or "
                    "mysql, or back its volume up (volume_backup). Nothing was changed" % (key_of(decl), decl["engine"])
                )

    def compression(self):
        return choose_compression(self.module, self.params.get("compression"), self.zstd)

    # -- backup -----------------------------------------------------------------------------
    def dump(self, decl, dest, compression, kind="dump"):
        """Write a verified archive of one database's online dump into dest; its manifest facts."""
        started = time.time()
        record = self.databases.record(decl)  # the schema as it is now, for the report and a verdict
        counter = RowCounter(decl["engine"])
        final = os.path.join(dest, archive_name(dump_name(decl), compression, kind="dump"))
        with ArchiveWriter(final, compression, self.zstd) as writer:
            client, container, argv = self.databases.stream(decl, "data", "the online dump")
            for chunk in client:
                counter.feed(chunk)
                writer.write(chunk)
            counter.close()
            self.databases.check_exit(decl, container, argv, client.rc, "", client.stderr, "the online dump")
            if not counter.complete:
                raise DatabaseError(
                    "the online dump of %s ended before its last line (%d bytes): it is incomplete and was not kept; "
                    "the database was not touched" % (key_of(decl), counter.bytes)
                )
            manifest = writer.commit(
                {
                    "kind": "dump",
                    "purpose": kind,
                    "created": utc_stamp(),
                    "database": {
                        "key": key_of(decl),
                        "service": decl["service"],
                        "engine": decl["engine"],
                        "database": decl["database"],
                        "image": container.attrs.get("Config", {}).get("Image"),
                    },
                    "format": "sql",
                    "bytes": counter.bytes,
                    "rows": counter.rows,
                    "relations": counter.relations,
                    "large_objects": counter.large_objects,
                    "schema_sha256": record["sha256"],
                    "migrations": record["migrations"],
                    "versions": {"python": platform.python_version()},
                }
            )
        return {
            "database": key_of(decl),
            "archive": final,
            "manifest": manifest_path(final),
            "sha256": manifest["sha256"],
            "size": manifest["size"],
            "bytes": manifest["bytes"],
            "rows": manifest["rows"],
            "compression": compression,
            "duration": round(time.time() - started, 3),
        }

    def check_dest(self, dest, option="dest"):
        prepare_dir(self.module, dest, option, "the dumps")

    def backup(self):
        dest = self.params["dest"]
        self.check_dest(dest)
        compression = self.compression()
        started, backups = time.time(), []
        for decl in self.databases.declarations:
            if self.module.check_mode:
                self.databases.container(decl["service"], "the online dump")
                backups.append(
                    {
                        "database": key_of(decl),
                        "archive": os.path.join(dest, archive_name(dump_name(decl), compression, kind="dump")),
                        "volumes": self.databases.volumes(decl),
                    }
                )
                continue
            backup = self.dump(decl, dest, compression)
            backup["volumes"] = self.databases.volumes(decl)
            keep = self.params.get("keep")
            backup["pruned"] = (
                prune(
                    dest,
                    dump_name(decl),
                    keep,
                    kind="dump",
                    owner=lambda m: dump_name(
                        {"service": m["database"]["service"], "database": m["database"]["database"]}
                    ),
                )
                if keep
                else []
            )
            backups.append(backup)
        return {
            "changed": True,
            "backups": backups,
            "stopped_containers": [],
            "duration": round(time.time() - started, 3),
        }

    # -- verify -----------------------------------------------------------------------------
    def verify_dump(self, archive):
        """The archive's manifest, once its sha256 matches and the dump reads through with the
        same rows per table and its last line: before anything is touched."""
        if not os.path.isfile(archive):
            raise ArchiveError("archive %s does not exist; nothing was changed" % archive)
        manifest = read_manifest(archive)
        if manifest.get("kind") != "dump":
            raise ArchiveError(
                "%s is a volume archive, not a database dump: restore it with stackops.rollback.volume_backup; "
                "nothing was changed" % archive
            )
        digest = file_sha256(archive)
        if digest != manifest.get("sha256"):
            raise ArchiveError(
                "archive %s does not match its manifest (sha256 %s, manifest says %s): it is truncated or corrupt; "
                "nothing was changed" % (archive, digest, manifest.get("sha256"))
            )
        counter = RowCounter(manifest["database"]["engine"])
        for chunk in decompressed_chunks(archive, manifest.get("compression") or compression_of(archive), self.zstd):
            counter.feed(chunk)
        counter.close()
        problems = row_differences(manifest["rows"], counter.rows)
        if counter.bytes != manifest["bytes"]:
            problems.insert(0, "%d bytes, the manifest says %d" % (counter.bytes, manifest["bytes"]))
        if not counter.complete:
            problems.insert(0, "the dump's last line is missing")
        if problems:
            raise ArchiveError(
                "archive %s does not match its manifest: %s; nothing was changed" % (archive, "; ".join(problems[:10]))
            )
        return manifest

    def verify(self):
        archive = self.params["archive"]
        if not archive:
            raise ArchiveError("state=verify needs archive, the dump to check")
        started = time.time()
        manifest = self.verify_dump(archive)
        return dict(self.facts(archive, manifest), changed=False, duration=round(time.time() - started, 3))

    @staticmethod
    def facts(archive, manifest):
        return {
            "database": manifest["database"]["key"],
            "archive": archive,
            "manifest": manifest_path(archive),
            "sha256": manifest["sha256"],
            "size": manifest["size"],
            "bytes": manifest["bytes"],
            "rows": manifest["rows"],
            "created": manifest.get("created"),
        }

    # -- restore ----------------------------------------------------------------------------
    def declaration_of(self, manifest, archive):
        key = manifest["database"]["key"]
        for decl in self.databases.declarations:
            if key_of(decl) == key:
                return decl
        raise DatabaseError(
            "archive %s holds database %s, which databases does not declare (declared: %s); declare it (service, "
            "engine, database, user) to restore it. Nothing was changed"
            % (archive, key, ", ".join(key_of(d) for d in self.databases.declarations) or "none")
        )

    def load(self, decl, archive, manifest):
        """Empty the database and load the archive into it, the row counts checked; raises on any failure."""
        engine = decl["engine"]
        chunks = decompressed_chunks(archive, manifest.get("compression") or compression_of(archive), self.zstd)
        if engine == "postgres":
            stdin = postgres_load(chunks, manifest["relations"], manifest["rows"], manifest.get("large_objects", 0))
        else:
            tables = sorted(self.databases.row_counts(decl))
            stdin = mariadb_load(chunks, tables)
        client, container, argv = self.databases.stream(decl, "sql", "loading the dump", stdin=stdin)
        output = b"".join(client).decode("utf-8", "replace")
        self.databases.check_exit(decl, container, argv, client.rc, output, client.stderr, "loading the dump")
        if engine != "postgres":
            problems = row_differences(manifest["rows"], counted_rows(output))
            if problems:
                raise DatabaseError("the loaded rows do not match the dump: %s" % "; ".join(problems[:10]))

    def restore(self, archive=None, manifest=None):
        """Load a dump (params' archive by default); `manifest`, from verify_dump, when the caller verified it."""
        archive = archive or self.params["archive"]
        if not archive:
            raise ArchiveError("state=restore needs archive, the dump to restore")
        started = time.time()
        manifest = manifest or self.verify_dump(archive)  # before anything is touched
        decl = self.declaration_of(manifest, archive)
        rows_now = self.databases.row_counts(decl)
        result = dict(self.facts(archive, manifest), rows_before=rows_now, stopped_containers=[])
        if self.module.check_mode:
            return dict(result, changed=True, duration=round(time.time() - started, 3))
        safety_dir = self.params.get("safety_dir") or os.path.dirname(os.path.abspath(archive))
        self.check_dest(safety_dir, "safety_dir")
        safety = self.dump(decl, safety_dir, manifest.get("compression") or self.compression(), kind="safety")
        try:
            self.load(decl, archive, manifest)
        except Exception as exc:
            if decl["engine"] == "postgres":
                left = "the database was left as it was (its transaction rolled back)"
            else:
                # MariaDB may hold half a load: put the safety dump back, and say so if even that fails.
                try:
                    self.load(decl, safety["archive"], read_manifest(safety["archive"]))
                    left = "the database was put back as it was from the safety dump"
                except Exception as again:  # noqa: BLE001 - reported with the first failure
                    left = "putting the safety dump back failed too (%s): load it by hand" % again
            raise DatabaseError(
                "restore of %s from %s failed (%s); %s; safety dump %s"
                % (key_of(decl), archive, exc, left, safety["archive"])
            ) from exc
        return dict(
            result,
            changed=True,
            safety_archive=safety["archive"],
            rows_after=dict(manifest["rows"]),
            duration=round(time.time() - started, 3),
        )

    def run(self):
        state = self.params["state"]
        if state == "verify":
            return self.verify()
        if not self.declarations:
            raise DatabaseError(
                "databases is empty: declare the databases to %s (service, engine, database, user)" % state
            )
        self.check_engines()
        return self.backup() if state == "backup" else self.restore()
