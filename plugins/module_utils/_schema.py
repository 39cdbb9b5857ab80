# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Database schemas, pure: normalize a schema dump, parse it, and judge whether a release's code
can run on the schema a database has now (the field guide's "Database Rollback Considerations").

A schema comes from the database's own dump client (pg_dump --schema-only, mariadb-dump
--no-data; see _database.py). `parse` reads the statements a dump is made of into tables
(columns with type, NOT NULL and default; constraints), indexes and other objects. `judge`
compares the schema recorded with a rollback's target (what its code was written for) with the
live one and classifies every difference:

- compatible: additions the target's code ignores and that accept its writes (a new table, a new
  nullable or defaulted column, a new index, a relaxed NOT NULL);
- incompatible: something the target has is gone, renamed or retyped; a new NOT NULL column with
  no default; a new unique, check or foreign-key constraint; a migration table that says a
  migration is half-applied; migrations applied since the target that left the schema unchanged
  (data migrations, possibly one-way);
- the verdict is the worst of them: unchanged, compatible or incompatible (`unknown` when there is
  no schema to compare, decided by the caller).

Migration tables are found by name and columns (MIGRATION_TABLES) and compared by their rows, not
as part of the schema.
"""

from __future__ import annotations

import hashlib
import re

VERDICTS = ("unchanged", "compatible", "incompatible", "unknown")
ENGINES = ("postgres", "mariadb", "mysql", "command")

# Migration tools' bookkeeping tables: (table name, columns it must have, version columns, tool).
MIGRATION_TABLES = (
    ("alembic_version", ("version_num",), ("version_num",), "Alembic"),
    ("django_migrations", ("app", "name", "applied"), ("app", "name"), "Django"),
    ("schema_migrations", ("version", "dirty"), ("version",), "golang-migrate"),
    ("schema_migrations", ("version",), ("version",), "Rails, dbmate or Ecto"),
    ("flyway_schema_history", ("version", "script", "success"), ("version", "script"), "Flyway"),
    ("databasechangelog", ("id", "author", "filename"), ("id", "author", "filename"), "Liquibase"),
    ("_prisma_migrations", ("migration_name", "finished_at"), ("migration_name",), "Prisma"),
    ("knex_migrations", ("name",), ("name",), "Knex"),
    ("goose_db_version", ("version_id", "is_applied"), ("version_id",), "goose"),
)

_PG_DROP_LINE = re.compile(r"^(--|SET |SELECT pg_catalog\.set_config\(|\\restrict |\\unrestrict )")
_MY_VERSIONED_COMMENT = re.compile(r"/\*!\d{5}\s*(.*?)\s*\*/", re.S)
# MariaDB 10.11.8+ and 11.x open every dump with `/*M!999999\- enable the sandbox mode */`.
_MY_SANDBOX_COMMENT = re.compile(r"/\*M!\d+.*?\*/", re.S)
_MY_TABLE_OPTION_COUNTER = re.compile(r"\s+AUTO_INCREMENT=\d+")
_MY_DEFINER = re.compile(r"\s+DEFINER=`[^`]*`@`[^`]*`")


def sha256_text(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- normalize ---------------------------------------------------------------------------------
def normalize(engine, text):
    """The dump as the text recorded and hashed: what does not describe the schema is taken out.

    PostgreSQL: comments, SET lines, the search_path call and the \\restrict lines 17.6, 16.10 and
    15.14 add. MariaDB / MySQL: comments, session SET lines, DROP ... IF EXISTS, DEFINER clauses and
    AUTO_INCREMENT counters (they count rows, they are not schema). Blank lines are dropped.
    """
    if engine == "command":
        # Only what no schema holds: trailing blanks, and the random \restrict lines of a plain pg_dump.
        kept = [
            line.rstrip() for line in text.strip().splitlines() if not line.startswith(("\\restrict ", "\\unrestrict "))
        ]
        return "\n".join(kept) + "\n"
    lines = []
    if engine == "postgres":
        for line in text.splitlines():
            if not line.strip() or _PG_DROP_LINE.match(line):
                continue
            lines.append(line.rstrip())
        return "\n".join(lines) + "\n"
    text = _MY_VERSIONED_COMMENT.sub(lambda m: m.group(1), _MY_SANDBOX_COMMENT.sub("", text))
    for statement in split_statements(text, engine):
        first = statement.lstrip().upper()
        if first.startswith(("SET ", "DROP ", "LOCK ", "UNLOCK ", "USE ", "--")):
            continue
        statement = _MY_DEFINER.sub("", _MY_TABLE_OPTION_COUNTER.sub("", statement))
        body = [line.rstrip() for line in statement.strip().splitlines() if line.strip()]
        if len(split_statements(statement, engine)) > 1:  # a trigger's BEGIN ... END: keep it one statement
            lines.extend(["DELIMITER ;;", *body[:-1], body[-1] + ";;", "DELIMITER ;"])
            continue
        lines.extend(body)
        lines[-1] += ";"
    return "\n".join(lines) + "\n"


_MY_DELIMITER = re.compile(r"DELIMITER[ \t]+(\S+)[^\n]*", re.I)


def split_statements(text, engine="postgres"):
    """SQL statements of a dump, without their final semicolon; quotes and dollar-quoting respected,
    and the client's DELIMITER lines (mariadb-dump writes a trigger between DELIMITER ;; and DELIMITER ;)."""
    statements, current, i, n = [], [], 0, len(text)
    quote = None  # the closing delimiter while inside a quoted string or body
    start, delimiter = 0, ";"
    while i < n:
        c = text[i]
        if (
            not quote
            and engine != "postgres"
            and c in "Dd"
            and (i == 0 or text[i - 1] == "\n")
            and not text[start:i].strip()
        ):
            m = _MY_DELIMITER.match(text, i)
            if m:
                delimiter, i = m.group(1), m.end()
                start = i
                continue
        if quote:
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
            if c == "\\" and quote in ("'", '"') and engine != "postgres":
                i += 2
                continue
            i += 1
            continue
        if c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c in ("'", '"', "`"):
            quote = c
        elif c == "$" and engine == "postgres":
            m = re.match(r"\$[A-Za-z_0-9]*\$", text[i:])
            if m:
                quote = m.group(0)
                i += len(quote)
                continue
        elif text.startswith(delimiter, i):
            current.append(text[start:i])
            statement = "".join(current).strip()
            if statement:
                statements.append(statement)
            current, start = [], i + len(delimiter)
            i += len(delimiter)
            continue
        i += 1
    tail = text[start:].strip()
    if tail:
        statements.append(tail)
    return statements


# -- parse -------------------------------------------------------------------------------------
def _unquote(name):
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in '"`':
        return name[1:-1].replace(name[0] * 2, name[0])
    return name


def qualified(name, engine):
    """'public.t' -> 't' (the default schema is left out); other schemas are kept."""
    parts = [_unquote(p) for p in re.findall(r'"(?:[^"]|"")*"|`(?:[^`]|``)*`|[^.]+', name.strip())]
    if engine == "postgres" and len(parts) == 2 and parts[0] == "public":
        return parts[1]
    return ".".join(parts)


def _squash(text):
    return re.sub(r"\s+", " ", text).strip()


def split_top_level(body):
    """Split a parenthesized body at commas that are not nested in parentheses or quotes."""
    parts, depth, current, quote = [], 0, [], None
    for c in body:
        if quote:
            current.append(c)
            if c == quote:
                quote = None
            continue
        if c in "'\"`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(c)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


_COLUMN_STOP = re.compile(
    r"\s+(NOT\s+NULL|NULL|DEFAULT|AUTO_INCREMENT|COMMENT|GENERATED|ON\s+UPDATE|INVISIBLE|CHECK|"
    r"PRIMARY\s+KEY|UNIQUE|REFERENCES|CONSTRAINT)\b",
    re.I,
)
# A PostgreSQL cast after a default: '::character varying', '::text[]', not the ' NOT NULL' after it.
_CAST = r"(?:::\w+(?:\s+(?!NOT\b|NULL\b|COLLATE\b)\w+)*(?:\(\d+(?:,\s*\d+)?\))?(?:\[\])*)*"
_DEFAULT = re.compile(r"\bDEFAULT\s+('(?:[^']|'')*'" + _CAST + r"|\([^)]*\)|[^\s,]+(?:\([^)]*\))?" + _CAST + ")", re.I)


def parse_column(definition):
    """'note text DEFAULT NULL' -> (name, {type, not_null, default})."""
    m = re.match(r'\s*("(?:[^"]|"")*"|`[^`]*`|\S+)\s+(.*)$', definition, re.S)
    name, rest = _unquote(m.group(1)), " " + _squash(m.group(2))
    stop = _COLUMN_STOP.search(rest)
    col_type = (rest[: stop.start()] if stop else rest).strip().lower()
    modifiers = rest[stop.start() :] if stop else ""
    default = None
    dm = _DEFAULT.search(modifiers)
    if dm and dm.group(1).upper() != "NULL":
        default = dm.group(1)
    if re.search(r"\bAUTO_INCREMENT\b|\bGENERATED\b.*\bIDENTITY\b", modifiers, re.I):
        default = default or "(generated)"
    not_null = bool(re.search(r"\bNOT\s+NULL\b|\bPRIMARY\s+KEY\b", modifiers, re.I))
    return name, {"type": col_type, "not_null": not_null, "default": default, "check": _inline_check(modifiers)}


def _inline_check(modifiers):
    """'... CHECK (`qty` >= 0)' -> 'CHECK (`qty` >= 0)': MariaDB / MySQL print a column's own CHECK
    (and the json_valid one of a JSON column) in the column's definition."""
    m = re.search(r"\bCHECK\s*\(", modifiers, re.I)
    if not m:
        return None
    depth, quote = 0, None
    for j in range(m.end() - 1, len(modifiers)):
        c = modifiers[j]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return modifiers[m.start() : j + 1]
    return modifiers[m.start() :]


def _constraint_kind(definition):
    upper = definition.upper()
    for kind in ("PRIMARY KEY", "UNIQUE", "FOREIGN KEY", "CHECK", "EXCLUDE"):
        if upper.startswith(kind):
            return kind.lower()
    return "constraint"


def empty_schema():
    return {"tables": {}, "indexes": {}, "objects": {}}


def parse(engine, text):
    """A dump's tables, indexes and other objects (see the module docstring)."""
    schema = empty_schema()
    if engine == "command":
        return schema
    for statement in split_statements(text, engine):
        _parse_statement(schema, engine, _squash(statement) if engine == "postgres" else statement.strip())
    for name in list(schema["tables"]):  # mysqldump writes a placeholder table for each view
        if "view %s" % name in schema["objects"]:
            del schema["tables"][name]
    return schema


def _table(schema, name):
    return schema["tables"].setdefault(name, {"columns": {}, "constraints": {}})


def _parse_statement(schema, engine, statement):
    m = re.match(
        r"CREATE\s+(?:UNLOGGED\s+|TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\S+)\s*\((.*)\)(.*)$",
        statement,
        re.S | re.I,
    )
    if m:
        return _parse_create_table(schema, engine, qualified(m.group(1), engine), m.group(2))
    m = re.match(r"ALTER\s+TABLE\s+(?:ONLY\s+)?(\S+)\s+(.*)$", _squash(statement), re.I)
    if m:
        return _parse_alter_table(schema, engine, qualified(m.group(1), engine), m.group(2))
    m = re.match(
        r"CREATE\s+(UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(\S+)\s+ON\s+(?:ONLY\s+)?(\S+)\s+(.*)$",
        _squash(statement),
        re.I,
    )
    if m:
        schema["indexes"][_unquote(m.group(2))] = {
            "table": qualified(m.group(3), engine),
            "unique": bool(m.group(1)),
            "definition": m.group(4),
        }
        return None
    squashed = _squash(statement)
    if re.match(r"(CREATE|ALTER)\s+SEQUENCE\b|SELECT\s+pg_catalog\.setval|COMMENT\s+ON\b", squashed, re.I):
        return None  # sequences follow their columns' defaults; comments are not schema
    m = re.match(
        r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:ALGORITHM=\S+\s+)?(?:SQL\s+SECURITY\s+\S+\s+)?"
        r"(?:MATERIALIZED\s+)?(VIEW|FUNCTION|PROCEDURE|TRIGGER|TYPE|EXTENSION|SCHEMA|DOMAIN|EVENT)\s+"
        r"(?:IF\s+NOT\s+EXISTS\s+)?([^\s(]+)",
        squashed,
        re.I,
    )
    if m:
        kind = m.group(1).lower()
        schema["objects"]["%s %s" % (kind, qualified(m.group(2), engine))] = squashed
        return None
    schema["objects"]["statement %s" % sha256_text(squashed)[:12]] = squashed
    return None


def _parse_create_table(schema, engine, name, body):
    table = _table(schema, name)
    for part in split_top_level(body):
        upper = part.upper()
        m = re.match(r"CONSTRAINT\s+(\S+)\s+(.*)$", part, re.S | re.I)
        if m:
            definition = _squash(m.group(2))
            table["constraints"][_unquote(m.group(1))] = {
                "kind": _constraint_kind(definition),
                "definition": definition,
            }
        elif upper.startswith("PRIMARY KEY"):
            table["constraints"]["PRIMARY"] = {"kind": "primary key", "definition": _squash(part)}
        elif re.match(r"UNIQUE\s+(KEY|INDEX)\b", upper):
            m = re.match(r"UNIQUE\s+(?:KEY|INDEX)\s+(\S+)\s+(.*)$", part, re.S | re.I)
            table["constraints"][_unquote(m.group(1))] = {
                "kind": "unique",
                "definition": "UNIQUE " + _squash(m.group(2)),
            }
        elif re.match(r"(FULLTEXT\s+|SPATIAL\s+)?(KEY|INDEX)\b", upper):
            m = re.match(r"((?:FULLTEXT\s+|SPATIAL\s+)?)(?:KEY|INDEX)\s+(\S+)\s+(.*)$", part, re.S | re.I)
            schema["indexes"][_unquote(m.group(2))] = {
                "table": name,
                "unique": False,
                "definition": (m.group(1) + _squash(m.group(3))).strip(),
            }
        elif re.match(r"(UNIQUE|CHECK|FOREIGN\s+KEY|EXCLUDE)\b", upper):
            definition = _squash(part)
            table["constraints"]["%s %s" % (_constraint_kind(definition), definition)] = {
                "kind": _constraint_kind(definition),
                "definition": definition,
            }
        else:
            column, spec = parse_column(part)
            table["columns"][column] = spec


def _parse_alter_table(schema, engine, name, action):
    table = _table(schema, name)
    m = re.match(r"ADD\s+CONSTRAINT\s+(\S+)\s+(.*)$", action, re.I)
    if m:
        definition = m.group(2)
        table["constraints"][_unquote(m.group(1))] = {"kind": _constraint_kind(definition), "definition": definition}
        return
    m = re.match(r"ALTER\s+COLUMN\s+(\S+)\s+SET\s+DEFAULT\s+(.*)$", action, re.I)
    if m and _unquote(m.group(1)) in table["columns"]:
        table["columns"][_unquote(m.group(1))]["default"] = m.group(2)
        return
    m = re.match(r"ALTER\s+COLUMN\s+(\S+)\s+ADD\s+GENERATED\b", action, re.I)
    if m and _unquote(m.group(1)) in table["columns"]:
        table["columns"][_unquote(m.group(1))]["default"] = "(generated)"
        return
    if re.match(r"(OWNER\s+TO|REPLICA\s+IDENTITY|ENABLE|DISABLE|CLUSTER|SET\s)", action, re.I):
        return
    schema["objects"]["statement ALTER TABLE %s %s" % (name, action)] = "ALTER TABLE %s %s" % (name, action)


# -- migration tables --------------------------------------------------------------------------
def migration_tables(schema):
    """[(table as in the schema, spec)] of the migration tables a schema has, by name and columns."""
    found, taken = [], set()
    for spec in MIGRATION_TABLES:
        table_name, columns = spec[0], spec[1]
        for name, table in sorted(schema["tables"].items()):
            if name.lower().split(".")[-1] != table_name or name in taken:
                continue
            have = {c.lower() for c in table["columns"]}
            if all(c in have for c in columns):
                found.append((name, spec))
                taken.add(name)
    return found


def _truthy(value):
    return str(value).strip().lower() in ("t", "true", "1", "yes")


def migration_state(spec, rows):
    """(versions, half-applied notes) of a migration table's rows."""
    table_name, _columns, version_columns, _tool = spec
    versions, half = [], []
    for row in rows:
        row = {str(k).lower(): v for k, v in row.items()}
        version = ":".join(str(row.get(c)) for c in version_columns if row.get(c) is not None)
        if table_name == "flyway_schema_history" and row.get("version") is None:
            continue  # a repeatable migration: no version
        if table_name == "goose_db_version" and not _truthy(row.get("is_applied")):
            continue  # goose records a rollback as a row with is_applied false
        if table_name == "schema_migrations" and "dirty" in row and _truthy(row.get("dirty")):
            half.append("version %s is dirty (half-applied)" % version)
        if table_name == "flyway_schema_history" and not _truthy(row.get("success")):
            half.append("version %s failed (success = false)" % version)
        if table_name == "_prisma_migrations" and row.get("finished_at") is None and row.get("rolled_back_at") is None:
            half.append("migration %s never finished" % version)
        versions.append(version)
    return versions, half


# -- judge -------------------------------------------------------------------------------------
def _change(verdict, text):
    return {"verdict": verdict, "text": text}


def _describe_default(default):
    return "default %s" % default if default is not None else "no default"


def diff_schemas(target, live):
    """Differences from the target's schema to the live one, each {verdict, text}."""
    changes = []
    migration_names = {name for name, _spec in migration_tables(target) + migration_tables(live)}
    t_tables = {k: v for k, v in target["tables"].items() if k not in migration_names}
    l_tables = {k: v for k, v in live["tables"].items() if k not in migration_names}
    added_tables = sorted(set(l_tables) - set(t_tables))
    for name in sorted(set(t_tables) - set(l_tables)):
        same = [a for a in added_tables if set(l_tables[a]["columns"]) == set(t_tables[name]["columns"])]
        renamed = " (renamed to %s?)" % same[0] if same else ""
        changes.append(_change("incompatible", "table %s: in the target, gone since%s" % (name, renamed)))
    for name in added_tables:
        changes.append(_change("compatible", "table %s: added since" % name))
    for name in sorted(set(t_tables) & set(l_tables)):
        changes.extend(_diff_table(name, t_tables[name], l_tables[name]))
    changes.extend(_diff_indexes(target["indexes"], live["indexes"]))
    for key in sorted(set(target["objects"]) | set(live["objects"])):
        label = (
            key
            if not key.startswith("statement ")
            else "statement %r" % (target["objects"].get(key) or live["objects"].get(key))[:80]
        )
        if key not in live["objects"]:
            changes.append(_change("incompatible", "%s: in the target, gone since" % label))
        elif key not in target["objects"]:
            changes.append(_change("compatible", "%s: added since" % label))
        elif target["objects"][key] != live["objects"][key]:
            changes.append(_change("incompatible", "%s: changed since" % label))
    return changes


def _diff_table(name, target, live):
    changes = []
    t_cols, l_cols = target["columns"], live["columns"]
    added = sorted(set(l_cols) - set(t_cols))
    for col in sorted(set(t_cols) - set(l_cols)):
        same = [a for a in added if l_cols[a]["type"] == t_cols[col]["type"]]
        renamed = " (renamed to %s?)" % same[0] if same else ""
        changes.append(_change("incompatible", "column %s.%s: in the target, dropped since%s" % (name, col, renamed)))
    for col in added:
        spec = l_cols[col]
        if spec["not_null"] and spec["default"] is None:
            changes.append(
                _change(
                    "incompatible",
                    "column %s.%s: added since, NOT NULL without a default (the target's inserts fail)" % (name, col),
                )
            )
        else:
            how = "nullable" if not spec["not_null"] else _describe_default(spec["default"])
            changes.append(_change("compatible", "column %s.%s: added since (%s, %s)" % (name, col, spec["type"], how)))
    for col in sorted(set(t_cols) & set(l_cols)):
        t, lv = t_cols[col], l_cols[col]
        where = "column %s.%s" % (name, col)
        if t["type"] != lv["type"]:
            changes.append(
                _change("incompatible", "%s: type %s in the target, %s now" % (where, t["type"], lv["type"]))
            )
        if not t["not_null"] and lv["not_null"]:
            verdict = "compatible" if lv["default"] is not None else "incompatible"
            changes.append(
                _change(
                    verdict,
                    "%s: NULL allowed in the target, NOT NULL now%s"
                    % (where, "" if lv["default"] is None else " (with %s)" % _describe_default(lv["default"])),
                )
            )
        elif t["not_null"] and not lv["not_null"]:
            changes.append(_change("compatible", "%s: NOT NULL in the target, NULL allowed now" % where))
        if t.get("check") != lv.get("check"):
            verdict = "compatible" if lv.get("check") is None else "incompatible"
            changes.append(
                _change(
                    verdict,
                    "%s: %s in the target, %s now"
                    % (where, t.get("check") or "no CHECK", lv.get("check") or "no CHECK"),
                )
            )
        if t["default"] != lv["default"]:
            # The target's inserts leave the column out when it had a default: it must still have one.
            verdict = (
                "incompatible"
                if (t["default"] is not None and lv["default"] is None and lv["not_null"])
                else "compatible"
            )
            changes.append(
                _change(
                    verdict,
                    "%s: %s in the target, %s now"
                    % (where, _describe_default(t["default"]), _describe_default(lv["default"])),
                )
            )
    t_cons, l_cons = target["constraints"], live["constraints"]
    for cname in sorted(set(t_cons) - set(l_cons)):
        changes.append(
            _change(
                "incompatible",
                "constraint %s.%s (%s): in the target, gone since" % (name, cname, t_cons[cname]["definition"]),
            )
        )
    for cname in sorted(set(l_cons) - set(t_cons)):
        changes.append(
            _change(
                "incompatible",
                "constraint %s.%s (%s): added since (the target's writes may violate it)"
                % (name, cname, l_cons[cname]["definition"]),
            )
        )
    for cname in sorted(set(t_cons) & set(l_cons)):
        if t_cons[cname]["definition"] != l_cons[cname]["definition"]:
            changes.append(
                _change(
                    "incompatible",
                    "constraint %s.%s: %s in the target, %s now"
                    % (name, cname, t_cons[cname]["definition"], l_cons[cname]["definition"]),
                )
            )
    return changes


def _diff_indexes(target, live):
    changes = []
    for name in sorted(set(target) - set(live)):
        changes.append(
            _change(
                "incompatible",
                "%sindex %s on %s: in the target, gone since"
                % ("unique " if target[name]["unique"] else "", name, target[name]["table"]),
            )
        )
    for name in sorted(set(live) - set(target)):
        idx = live[name]
        if idx["unique"]:
            changes.append(
                _change(
                    "incompatible",
                    "unique index %s on %s: added since (the target's writes may violate it)" % (name, idx["table"]),
                )
            )
        else:
            changes.append(_change("compatible", "index %s on %s: added since" % (name, idx["table"])))
    for name in sorted(set(target) & set(live)):
        if target[name] != live[name]:
            verdict = "incompatible" if live[name]["unique"] else "compatible"
            changes.append(
                _change(
                    verdict,
                    "index %s: %s in the target, %s now" % (name, target[name]["definition"], live[name]["definition"]),
                )
            )
    return changes


def diff_migrations(target, live):
    """Differences in the migration tables' rows: ({verdict, text} list, versions applied since)."""
    changes, since = [], []
    for table in sorted(set(target) | set(live)):
        t_versions = target.get(table, {}).get("versions", [])
        l_entry = live.get(table, {})
        for note in l_entry.get("half_applied", []):
            changes.append(_change("incompatible", "migration table %s: %s" % (table, note)))
        new = [v for v in l_entry.get("versions", []) if v not in t_versions]
        gone = [v for v in t_versions if v not in l_entry.get("versions", [])]
        since.extend(new)
        tool = l_entry.get("tool") or target.get(table, {}).get("tool", "?")
        if new and gone:  # tools that keep only the current head (Alembic, golang-migrate) land here
            changes.append(
                _change(
                    "info",
                    "migration table %s (%s): %s in the target, %s now"
                    % (table, tool, ", ".join(gone), ", ".join(new)),
                )
            )
        elif new:
            changes.append(
                _change("info", "migrations applied since the target (%s, %s): %s" % (table, tool, ", ".join(new)))
            )
        elif gone:
            changes.append(
                _change(
                    "info", "migrations the target had, not applied now (%s, %s): %s" % (table, tool, ", ".join(gone))
                )
            )
    return changes, since


def worst(verdicts):
    order = {v: i for i, v in enumerate(VERDICTS)}
    return max(verdicts, key=lambda v: order[v], default="unchanged")


def judge(engine, target_record, live_record):
    """Verdict of one database: {verdict, changes (strings), migrations_since}.

    Records are what _database.py dumps: {"schema": normalized text, "sha256", "migrations":
    {table: {tool, versions, half_applied}}}.
    """
    if target_record is None or not target_record.get("schema"):
        return {
            "verdict": "unknown",
            "changes": [
                "no schema was recorded with the target release (recorded before databases were declared, "
                "or without them)"
            ],
            "migrations_since": [],
        }
    migration_changes, since = diff_migrations(
        target_record.get("migrations") or {}, live_record.get("migrations") or {}
    )
    if engine == "command":
        same = target_record["sha256"] == live_record["sha256"]
        changes = (
            []
            if same
            else [
                _change(
                    "unknown",
                    "the schema the command prints changed since the target; "
                    "engine command cannot classify it (compare them with --diff)",
                )
            ]
        )
    else:
        changes = diff_schemas(parse(engine, target_record["schema"]), parse(engine, live_record["schema"]))
    if since and not changes:
        changes.append(
            _change(
                "incompatible",
                "migrations %s ran after the target's and left the schema unchanged: data migrations, possibly one-way"
                % ", ".join(since),
            )
        )
    changes.extend(migration_changes)
    verdict = worst([c["verdict"] for c in changes if c["verdict"] != "info"])
    return {
        "verdict": verdict,
        "changes": ["%s (%s)" % (c["text"], c["verdict"]) if c["verdict"] != "info" else c["text"] for c in changes],
        "migrations_since": since,
    }
