"""Unit tests of the online dumps' pure parts: counting rows as a dump streams, the load streams.

The dump texts are written the way pg_dump 15 and mariadb-dump 10.11 write them (one row a line
in both); the integration tests run the real clients.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from ansible_collections.stackops.rollback.plugins.module_utils import _archive, _dump

PG_DUMP = b"""--
-- PostgreSQL database dump
--
SET statement_timeout = 0;
CREATE TABLE public.records (
    id integer NOT NULL,
    note text
);
CREATE TABLE sales."Orders" (
    id integer
);
COPY public.records (id, note) FROM stdin;
1\tplain
2\ta line \\\\.
3\t\\N
\\.
COPY sales."Orders" (id) FROM stdin;
\\.
--
-- PostgreSQL database dump complete
--
"""

MARIADB_DUMP = b"""-- MariaDB dump 10.19  Distrib 10.11.18-MariaDB
DROP TABLE IF EXISTS `empty`;
CREATE TABLE `empty` (
  `a` int(11) DEFAULT NULL
) ENGINE=InnoDB;
LOCK TABLES `empty` WRITE;
UNLOCK TABLES;
CREATE TABLE `odd``name` (
  `n` int(11) NOT NULL
) ENGINE=InnoDB;
LOCK TABLES `odd``name` WRITE;
INSERT INTO `odd``name` VALUES
(1,'it\\'s (a),(b);'),
(2,NULL),
(3,0x28293B);
INSERT INTO `odd``name` VALUES (4,'x'),(5,'y');
UNLOCK TABLES;
LOCK TABLES `inv` WRITE;
INSERT INTO `inv` (`a`, `hidden`) VALUES (1,2),(3,4);
UNLOCK TABLES;
DELIMITER ;;
CREATE TRIGGER t AFTER INSERT ON `inv` FOR EACH ROW BEGIN
INSERT INTO `audit` VALUES (NEW.a, NOW());
END ;;
DELIMITER ;
-- Dump completed
"""


def count(engine, data, size):
    counter = _dump.RowCounter(engine)
    for start in range(0, len(data), size):
        counter.feed(data[start : start + size])
    return counter.close()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 20])
def test_postgres_rows_are_counted_in_any_chunking(size):
    counter = count("postgres", PG_DUMP, size)
    assert counter.rows == {"records": 3, "sales.Orders": 0}
    assert counter.relations == {"records": "public.records", "sales.Orders": 'sales."Orders"'}
    assert counter.complete and counter.bytes == len(PG_DUMP)


@pytest.mark.parametrize("size", [1, 2, 5, 13, 1 << 20])
def test_mariadb_rows_are_counted_in_any_chunking(size):
    counter = count("mariadb", MARIADB_DUMP, size)
    # Parentheses and ");" inside quoted strings are not rows; a table without rows counts 0; a
    # column list (invisible columns) is read; a trigger's INSERT is not data.
    assert counter.rows == {"empty": 0, "odd`name": 5, "inv": 2}
    assert counter.complete


@pytest.mark.parametrize("engine,dump", [("postgres", PG_DUMP), ("mariadb", MARIADB_DUMP)])
def test_a_dump_cut_short_is_not_complete(engine, dump):
    cut = dump[: dump.rindex(b"-- ")]
    assert not count(engine, cut, 1 << 20).complete


def test_postgres_load_is_one_transaction_that_checks_every_count():
    stream = b"".join(_dump.postgres_load(iter([b"-- the dump\n"]), {"records": "public.records"}, {"records": 3}))
    text = stream.decode()
    assert text.startswith("SET client_min_messages = warning;\nBEGIN;\n") and text.rstrip().endswith("COMMIT;")
    check = text.index("count(*) INTO n FROM ONLY public.records")
    assert text.index("DROP SCHEMA") < text.index("-- the dump") < check
    assert "count(*) INTO n FROM ONLY public.records" in text and "IF n <> 3 THEN" in text
    assert "RAISE EXCEPTION 'stackops-rows: table % has % rows after the load, the dump %', 'records', n, 3" in text
    assert "--single-transaction" not in text and text.count("COMMIT;") == 1


def test_postgres_load_keeps_large_objects_in_the_one_transaction():
    dump = b"BEGIN;\nSELECT pg_catalog.lo_create('16390');\nCOMMIT;\nCOPY public.t (a) FROM stdin;\nCOMMIT;\n\\.\n"
    chunks = [dump[i : i + 5] for i in range(0, len(dump), 5)]
    text = b"".join(_dump.postgres_load(iter(chunks), {"t": "public.t"}, {"t": 1}, large_objects=1)).decode()
    assert "SAVEPOINT stackops_large_objects;" in text and "RELEASE SAVEPOINT stackops_large_objects;" in text
    # COPY data is data, even when a row reads COMMIT;
    assert "FROM stdin;\nCOMMIT;\n\\.\n" in text
    assert text.count("\nCOMMIT;\n") == 2 and text.rstrip().endswith("COMMIT;")


def test_a_long_line_is_counted_in_linear_time():
    row = b"x" * (8 << 20)
    dump = b"COPY public.blob (b) FROM stdin;\n" + row + b"\n\\.\n-- PostgreSQL database dump complete\n"
    started = time.monotonic()
    counter = count("postgres", dump, 64 << 10)
    assert counter.rows == {"blob": 1} and counter.complete
    assert time.monotonic() - started < 1.0


def test_mariadb_load_counts_each_table_under_its_write_lock():
    chunks = [MARIADB_DUMP[i : i + 11] for i in range(0, len(MARIADB_DUMP), 11)]
    text = b"".join(_dump.mariadb_load(iter(chunks), ["empty", "gone"])).decode()
    assert text.startswith("SET FOREIGN_KEY_CHECKS=0;\nDROP TABLE IF EXISTS `empty`;\nDROP TABLE IF EXISTS `gone`;")
    empty = text.index("LOCK TABLES `empty` WRITE;")
    assert text.index("SELECT 'stackops-rows', 'empty', COUNT(*) FROM `empty`;", empty) < text.index("UNLOCK", empty)
    assert "SELECT 'stackops-rows', 'odd`name', COUNT(*) FROM `odd``name`;\nUNLOCK TABLES;" in text
    assert text.count("SELECT 'stackops-rows'") == 3  # empty, odd`name, inv: not in the trigger
    # Everything else passes through unchanged.
    assert re.sub(r"SELECT 'stackops-rows'.*\n", "", text).endswith(MARIADB_DUMP.decode())


def test_counted_rows_and_their_differences():
    counts = _dump.counted_rows("stackops-rows\tempty\t0\nnoise\nstackops-rows\tt\t12\n")
    assert counts == {"empty": 0, "t": 12}
    assert _dump.row_differences({"empty": 0, "t": 12}, counts) == []
    assert _dump.row_differences({"t": 13, "u": 1}, {"t": 12, "x": 2}) == [
        "t: 12 rows, the dump 13",
        "u: no rows, the dump 1",
        "x: 2 rows, not in the dump",
    ]


def test_dump_archives_have_their_own_names_and_compressions(tmp_path):
    name = _archive.archive_name("db-shop", "zstd", stamp="20261202T010203000000Z", kind="dump")
    assert name == "db-shop-20261202T010203000000Z.sql.zst"
    assert _archive.compression_of(name) == "zstd"
    assert _archive.compression_of("x.sql") == "none" and _archive.compression_of("x.sql.gz") == "gzip"
    assert _archive.archive_pattern("db-shop", kind="dump").match(name)
    assert not _archive.archive_pattern("db-shop").match(name)
    with pytest.raises(_archive.ArchiveError, match="not an archive of ours"):
        _archive.compression_of("x.zip")


def test_archive_writer_leaves_nothing_when_the_work_fails(tmp_path):
    final = str(tmp_path / "db-shop-20261202T010203000000Z.sql.gz")
    with pytest.raises(RuntimeError), _archive.ArchiveWriter(final, "gzip") as writer:
        writer.write(b"half a dump")
        raise RuntimeError("the dump stopped")
    assert os.listdir(tmp_path) == []
    with _archive.ArchiveWriter(final, "gzip") as writer:
        writer.write(b"a whole dump\n")
        manifest = writer.commit({"kind": "dump"})
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(final), os.path.basename(final) + ".manifest.json"]
    assert manifest["sha256"] == _archive.file_sha256(final) and manifest["tool"] == _archive.TOOL
    assert oct(os.stat(final).st_mode & 0o777) == "0o600"
    assert _archive.read_manifest(final)["kind"] == "dump"  # a dump's manifest has no members
