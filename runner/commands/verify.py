"""`verify`: what the schema looks like now, and whether it drifted from a snapshot.

A report of tables, columns, constraints (foreign keys included), indexes (an INVALID one
marked, and listed in `invalid_indexes` with a warning: SPEC §10.5) and estimated row
counts, as JSON. `--write FILE` stores it; `--expect FILE` compares and exits 5 on
drift, so a hand-made ALTER on production shows up before the next migration trips on it.
Row counts are estimates and never count as drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.commands import bookkeeping, history_for, open_connection
from runner.errors import ConfigError, ValidationError
from runner.output import log
from runner.session import silence
from runner.session.database import Connection
from runner.settings import Settings

_SYSTEM = ("pg_catalog", "information_schema", "pg_toast")

_TABLES = """
SELECT n.nspname, c.relname, c.oid, c.reltuples
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%(schemas)s)
ORDER BY 1, 2"""
_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum"""
_CONSTRAINTS = """
SELECT conrelid, conname, contype::text, pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid = ANY(%(oids)s) ORDER BY conrelid, conname"""
_INDEXES = """
SELECT i.indrelid, c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid = ANY(%(oids)s) ORDER BY 1, 2"""
# SPEC §10.5: an index a concurrent build left half-built. Its definition carries the
# mark, so a snapshot comparison shows it as drift.
INVALID = " -- INVALID"
_KINDS = {"p": "PRIMARY KEY", "f": "FOREIGN KEY", "u": "UNIQUE", "c": "CHECK",
          "x": "EXCLUDE", "t": "TRIGGER", "n": "NOT NULL"}


def _schemas(conn: Connection, wanted: list[str]) -> list[str]:
    if wanted:
        return wanted
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE NOT nspname = ANY(%s) "
        "AND nspname NOT LIKE 'pg\\_temp\\_%%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%%' "
        "ORDER BY 1", (list(_SYSTEM),)).fetchall()
    return [r[0] for r in rows]


def report(conn: Connection, wanted: list[str],
           bookkeeping: set[tuple[str, str]]) -> dict[str, Any]:
    """`bookkeeping`: (schema, table) of the history format's tables, left out."""
    schemas = _schemas(conn, wanted)
    tables: dict[int, dict[str, Any]] = {}
    result: dict[str, Any] = {"schemas": {s: {"tables": {}} for s in schemas}}
    for schema, name, oid, reltuples in conn.execute(_TABLES, {"schemas": schemas}):
        if (schema, name) in bookkeeping:
            continue
        table: dict[str, Any] = {"columns": {}, "constraints": {}, "indexes": {},
                 "estimated_rows": None if reltuples < 0 else int(reltuples)}
        result["schemas"][schema]["tables"][name] = table
        tables[oid] = table
    oids = {"oids": list(tables)}
    for oid, name, type_, nullable, default, identity in conn.execute(_COLUMNS, oids):
        tables[oid]["columns"][name] = {
            "type": type_, "nullable": nullable, "default": default,
            "identity": {"a": "always", "d": "by default"}.get(identity)}
    for oid, name, kind, definition in conn.execute(_CONSTRAINTS, oids):
        tables[oid]["constraints"][name] = {"type": _KINDS.get(kind, kind),
                                            "definition": definition}
    invalid: list[str] = []
    for oid, name, definition, valid, qualified in conn.execute(_INDEXES, oids):
        tables[oid]["indexes"][name] = definition + ("" if valid else INVALID)
        if not valid:
            invalid.append(qualified)
    result["invalid_indexes"] = invalid
    return result


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "columns" in value:  # a whole table
        return "columns " + ", ".join(f"{name} {_describe(column)}"
                                      for name, column in value["columns"].items())
    if isinstance(value, dict) and "type" in value and "nullable" in value:
        text = str(value["type"]) + ("" if value["nullable"] else " NOT NULL")
        return text + (f" DEFAULT {value['default']}" if value["default"] else "")
    if isinstance(value, dict) and "definition" in value:
        return str(value["definition"])
    return str(value)


def drift(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Readable differences: `- missing`, `+ extra`, `~ changed`."""
    lines: list[str] = []

    def compare(path: str, want: dict[str, Any], have: dict[str, Any], what: str) -> None:
        for key in sorted(set(want) | set(have)):
            where = f"{path}.{key}" if path else key
            if key not in have:
                lines.append(f"- {what} {where} missing (expected {_describe(want[key])})")
            elif key not in want:
                lines.append(f"+ {what} {where} not in the snapshot ({_describe(have[key])})")
            elif want[key] != have[key]:
                if what == "table":
                    diff_table(where, want[key], have[key])
                else:
                    lines.append(f"~ {what} {where}: {_describe(want[key])} -> "
                                 f"{_describe(have[key])}")

    def diff_table(where: str, want: dict[str, Any], have: dict[str, Any]) -> None:
        compare(where, want["columns"], have["columns"], "column")
        compare(where, want["constraints"], have["constraints"], "constraint")
        compare(where, want["indexes"], have["indexes"], "index")

    def without_rows(schema: dict[str, Any]) -> dict[str, Any]:
        return {name: {k: v for k, v in t.items() if k != "estimated_rows"}
                for name, t in schema["tables"].items()}

    for schema in sorted(set(expected["schemas"]) | set(actual["schemas"])):
        if schema not in actual["schemas"]:
            lines.append(f"- schema {schema} missing")
        elif schema not in expected["schemas"]:
            lines.append(f"+ schema {schema} not in the snapshot")
        else:
            compare(schema, without_rows(expected["schemas"][schema]),
                    without_rows(actual["schemas"][schema]), "table")
    return lines


def verify(settings: Settings, schemas: list[str], write: str | None,
           expect: str | None) -> int:
    expected: dict[str, Any] | None = None
    if expect:
        try:
            expected = json.loads(Path(expect).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--expect {expect}: cannot read the snapshot ({exc})") from None
        if not schemas:
            schemas = sorted(expected.get("schemas", {})) if expected else []
    history = history_for(settings)
    with open_connection(settings, "verify") as conn:
        tables = bookkeeping(settings, conn)
        silence.doing("reading the schema")
        actual = report(conn, schemas, tables)
    if actual["invalid_indexes"]:
        drops = " ".join(f"DROP INDEX CONCURRENTLY {i};" for i in actual["invalid_indexes"])
        log.get().warning("invalid_indexes", indexes=actual["invalid_indexes"],
                          message="INVALID indexes (pg_index.indisvalid = false: a concurrent "
                                  "build or rebuild stopped part-way): never used by queries, "
                                  f"still updated by every write; drop with `{drops}` and "
                                  "build again (a migration that created one: then "
                                  f"`{history.cli('repair --failed')}`)")
    text = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    if write:
        Path(write).write_text(text)
        log.get().info("schema_snapshot_written", path=write,
                       tables=sum(len(s["tables"]) for s in actual["schemas"].values()))
    if expected is None:
        if not write:
            print(text, end="")
        return 0
    lines = drift(expected, actual)
    if lines:
        log.print_lines(lines)
        raise ValidationError(lines, head=f"schema drift from {expect}", drift=lines)
    log.get().info("schema_matches", snapshot=expect)
    return 0
