"""Where in a migration file a server error points, and what the server said (SPEC §3, §6).

PostgreSQL locates an error with the fields of its ErrorResponse (protocol "Error and
Notice Message Fields"): `P` position in the statement sent; `p` position inside an
internal query `q` (the body of a DO block or function, a query a PL/pgSQL statement
runs) and `W` context (`PL/pgSQL function inline_code_block line 5 at SQL statement`);
plus the schema, table, column, datatype and constraint names. In that order:

1. `P`: the position in the statement, hence in the file.
2. `p` + `q`: the internal query found in the statement's text (unique, or the one on
   the PL/pgSQL line the context names), plus the internal position.
3. The PL/pgSQL line of the context alone: that line of the dollar-quoted body, at its
   first non-blank character (where the PL/pgSQL statement starts).
4. None of these: the failing statement's first character (a duplicate schema, a unique
   violation: the statement is known, the server gives no finer position).

An error that belongs to no statement of the file has no line or column: `at` says
`commit` (a deferred constraint or trigger checked at COMMIT) or `bookkeeping` (the
runner's own statements: session reset, history and audit rows).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from runner.folder.statements import Plan, Statement, line_col
from runner.histories.history import as_fields

# The server's context text is translated by lc_messages: on a server that does not speak
# English, rule 3 finds nothing and rules 2 and 4 remain.
_PLPGSQL_LINE = re.compile(r"PL/pgSQL function (.*?) (?:near )?line (\d+)")
AT_STATEMENT, AT_COMMIT, AT_BOOKKEEPING = "statement", "commit", "bookkeeping"


def _body_start(text: str) -> int | None:
    """Offset in `text` of the first character inside its first dollar-quoted string
    (the body of a DO block or a function), found with PostgreSQL's own scanner."""
    from pglast.parser import scan

    data = text.encode()
    for token in scan(text):
        if token.name == "SCONST" and data[token.start:token.start + 1] == b"$":
            tag_end = data.index(b"$", token.start + 1)
            return len(data[:tag_end + 1].decode(errors="ignore"))
    return None


def _plpgsql_line(context: str | None) -> int | None:
    """The outermost PL/pgSQL line in the context (its last line names the code the
    statement itself holds; the first ones, functions that code called)."""
    found = _PLPGSQL_LINE.findall(context or "")
    return int(found[-1][1]) if found else None


def _line_start(text: str, start: int, lines: int) -> int | None:
    """Offset of the line `lines` (1-based) counted from `start`."""
    at = start
    for _ in range(lines - 1):
        at = text.find("\n", at) + 1
        if at == 0:
            return None
    return at


def offset_in_statement(text: str, diag: psycopg.errors.Diagnostic) -> int | None:
    """Character offset of the fault within the statement `text`, when the server's
    fields locate it (rules 1-3 of the module docstring); None otherwise. The server
    counts positions in characters, 1-based (errposition)."""
    if diag.statement_position:
        return int(diag.statement_position) - 1
    pl_line = _plpgsql_line(diag.context)
    body = _body_start(text) if pl_line is not None or diag.internal_query else None
    line_at = (_line_start(text, body, pl_line) if body is not None and pl_line is not None
               else None)
    query, position = diag.internal_query, diag.internal_position
    if query and position:
        found: list[int] = []
        while (hit := text.find(query, found[-1] + 1 if found else 0)) >= 0:
            found.append(hit)
        if line_at is not None:
            line_end = text.find("\n", line_at)
            on_line = [f for f in found if line_at <= f and (line_end < 0 or f <= line_end)]
            found = on_line or found
        if len(found) == 1:
            return found[0] + int(position) - 1
    if line_at is not None:
        return line_at + len(text[line_at:]) - len(text[line_at:].lstrip(" \t"))
    return None


def sql_error(plan: Plan, statement: Statement | None, exc: psycopg.Error,
              at: str = AT_STATEMENT) -> dict[str, Any]:
    """The `migration_failed` fields of a server error: file, line and column (null when
    the error belongs to no statement of the file), `at`, and every field the server
    sent that helps find the fault."""
    diag = exc.diag
    line = column = None
    if statement is not None:
        offset = offset_in_statement(statement.sql, diag)
        line, column = line_col(plan.migration.text, statement.offset + (offset or 0))
    message = diag.message_primary or str(exc).strip() or exc.__class__.__name__
    server = {"context": diag.context, "internal_query": diag.internal_query,
              "schema_name": diag.schema_name, "table_name": diag.table_name,
              "column_name": diag.column_name, "datatype_name": diag.datatype_name,
              "constraint_name": diag.constraint_name}
    return {**as_fields(plan.migration), "sqlstate": exc.sqlstate, "message": message,
            "detail": diag.message_detail, "hint": diag.message_hint, "line": line,
            "column": column, "at": at if statement is None else AT_STATEMENT,
            **{k: v for k, v in server.items() if v is not None}}


def where(error: dict[str, Any]) -> str:
    """`file:line:column`, or `file (at commit)` when no statement of the file failed."""
    if error.get("line") is None:
        return f"{error['file']} (at {error.get('at')})"
    return f"{error['file']}:{error['line']}:{error['column']}"
