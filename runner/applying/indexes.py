"""Half-built indexes are named, never recorded as applied (SPEC §10.5).

`CREATE INDEX CONCURRENTLY` and `REINDEX ... CONCURRENTLY` build in several transactions
of their own; stopped part-way (a unique violation, a cancel, a lost connection) they
leave an index with `pg_index.indisvalid = false`: kept up to date by every write, never
used by a query, and for a unique index still enforcing uniqueness (PostgreSQL docs,
"Building Indexes Concurrently"). A later `CREATE INDEX ... IF NOT EXISTS` of the same
name skips it with a notice and succeeds. So after a no-transaction file, failed or not,
the indexes its statements name are looked up: an invalid one is named with its fix,
and a file that left one is never recorded as applied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from runner.folder import split
from runner.folder.statements import Plan, Statement, line_col
from runner.histories.history import as_fields
from runner.session.database import Connection

# The runner's own check, not a server error: 55000 object_not_in_prerequisite_state
# (PostgreSQL's errcodes.txt), the index not being in the state the file must leave.
SQLSTATE = "55000"

_INVALID = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND ({})
ORDER BY 1"""
# An index CREATE INDEX names lives in its table's schema.
_NAMED = sql.SQL("(c.relname = {} AND c.relnamespace = (SELECT relnamespace FROM "
                 "pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass({})))")
_ON_TABLE = sql.SQL("i.indrelid = pg_catalog.to_regclass({})")
# REINDEX INDEX ... CONCURRENTLY stopped part-way leaves `<name>_ccnew` beside it.
_BESIDE_INDEX = sql.SQL("i.indrelid = (SELECT indrelid FROM pg_catalog.pg_index WHERE "
                        "indexrelid = pg_catalog.to_regclass({}))")


def _qualified(relation: dict[str, Any]) -> sql.Identifier:
    parts = [relation[k] for k in ("schemaname", "relname") if relation.get(k)]
    return sql.Identifier(*parts)


def _conditions(statement: Statement) -> list[sql.Composable]:
    """Where the invalid indexes this statement names are: CREATE INDEX (by its name,
    or every index of its table when it has none), REINDEX INDEX / TABLE (the indexes
    of that table, the `_ccnew` ones of a concurrent rebuild among them)."""
    from pglast.parser import ParseError, parse_sql_json

    first = split.first_keyword(statement.sql)
    if first is not None and first[0] not in ("CREATE", "REINDEX"):
        return []  # not parsed: a large file's INSERTs cost nothing here
    try:
        stmts = json.loads(parse_sql_json(statement.sql)).get("stmts", [])
    except ParseError:
        return []
    found: list[sql.Composable] = []
    for raw in stmts:
        kind, body = next(iter(raw["stmt"].items()))
        relation = body.get("relation")
        if not relation:
            continue
        name = sql.Literal(_qualified(relation).as_string(None))
        if kind == "IndexStmt" and body.get("idxname"):
            found.append(_NAMED.format(sql.Literal(body["idxname"]), name))
        elif kind == "IndexStmt" or (kind == "ReindexStmt"
                                     and body.get("kind") == "REINDEX_OBJECT_TABLE"):
            found.append(_ON_TABLE.format(name))
        elif kind == "ReindexStmt" and body.get("kind") == "REINDEX_OBJECT_INDEX":
            found.append(_BESIDE_INDEX.format(name))
    return found


def invalid(conn: Connection, plan: Plan) -> list[tuple[str, Statement]]:
    """Each invalid index the plan's statements name, as `schema.name` (quoted where
    PostgreSQL would need it), with the first statement naming it. Nothing when the
    connection cannot answer: the failure being reported already says enough."""
    named: dict[str, Statement] = {}
    try:
        for statement in plan.statements:
            conditions = _conditions(statement)
            if not conditions:
                continue
            query = sql.SQL(_INVALID).format(sql.SQL(" OR ").join(conditions))
            for (index,) in conn.execute(query).fetchall():
                named.setdefault(str(index), statement)
    except psycopg.Error:
        return []
    return list(named.items())


def _fix(indexes: list[str], cli: Callable[[str], str]) -> str:
    drops = " ".join(f"DROP INDEX CONCURRENTLY {index};" for index in indexes)
    return (f"drop {'it' if len(indexes) == 1 else 'them'} with `{drops}`, then run "
            f"`{cli('repair --failed')}`")


def name_invalid(conn: Connection, plan: Plan, error: dict[str, Any],
                 cli: Callable[[str], str]) -> None:
    """A no-transaction file failed: the invalid indexes its statements name, in
    `error` (`invalid_indexes`) and its message with the fix."""
    if plan.transactional:
        return
    found = [index for index, _ in invalid(conn, plan)]
    if found:
        error["invalid_indexes"] = found
        error["message"] += (f"; it left the INVALID index {', '.join(found)} "
                             "(pg_index.indisvalid = false), which a later run's IF NOT "
                             f"EXISTS would skip: {_fix(found, cli)}")


def left_invalid(conn: Connection, plan: Plan, cli: Callable[[str], str]) -> dict[str, Any] | None:
    """After a no-transaction file's statements succeeded: the `migration_failed`
    fields when an index they name is invalid (an IF NOT EXISTS that skipped the
    invalid index an earlier attempt left), else None."""
    if plan.transactional:
        return None
    found = invalid(conn, plan)
    if not found:
        return None
    names = [index for index, _ in found]
    line, column = line_col(plan.migration.text, found[0][1].offset)
    message = (f"the statements succeeded, but the INVALID index {', '.join(names)} "
               "(pg_index.indisvalid = false) remains: an IF NOT EXISTS skipped the index "
               "an earlier, failed build left; not recorded as applied: "
               f"{_fix(names, cli)}")
    return {**as_fields(plan.migration), "sqlstate": SQLSTATE, "message": message,
            "detail": None, "hint": None, "line": line, "column": column,
            "at": "statement", "invalid_indexes": names}
