"""Finding the statements of a migration file with PostgreSQL's own parser (pglast).

A split on `;` or a regex breaks on dollar quotes, `E''` strings, nested comments and
`BEGIN ATOMIC` bodies; the server's grammar does not. pglast is imported only when a file
must be lexed, so the no-op path of a pod start does not pay for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runner.errors import ValidationError
from runner.files import Migration, read_rollback

DIRECTIVES = {"migrate:no-transaction", "no-transaction"}
_NEEDS_NEW_FILE = "; move it to its own file whose first line is `-- migrate:no-transaction`"


@dataclass(frozen=True)
class Statement:
    offset: int  # character offset of its first token in Migration.text
    sql: str


@dataclass(frozen=True)
class Plan:
    migration: Migration
    transactional: bool
    statements: tuple[Statement, ...]
    wrapped: bool = False  # a psql BEGIN; ... COMMIT; wrapper was dropped (sqlx refuses it)


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset (CRLF counts as the line's end)."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def is_transactional(text: str) -> bool:
    """False when a directive stands among the leading comment lines."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        if line[2:].strip().lower() in DIRECTIVES:
            return False
    return True


Node = tuple[str, dict[str, Any]]  # (node type, its fields), as libpg_query's JSON has it


def _txn_kind(node: Node) -> str | None:
    kind, body = node
    if kind != "TransactionStmt":
        return None
    return str(body.get("kind", "")).removeprefix("TRANS_STMT_")


def _outside_transaction_only(node: Node) -> str | None:
    """What the statement is, when PostgreSQL refuses to run it in a transaction block."""
    kind, body = node
    if kind == "IndexStmt" and body.get("concurrent"):
        return "CREATE INDEX CONCURRENTLY"
    if kind == "ReindexStmt" and any(p.get("DefElem", {}).get("defname") == "concurrently"
                                     for p in body.get("params", ())):
        return "REINDEX CONCURRENTLY"
    if kind == "DropStmt" and body.get("concurrent"):
        return "DROP INDEX CONCURRENTLY"
    if kind == "VacuumStmt" and body.get("is_vacuumcmd"):
        return "VACUUM"
    if kind == "AlterTableStmt" and any(
        c.get("AlterTableCmd", {}).get("def", {}).get("PartitionCmd", {}).get("concurrent")
        for c in body.get("cmds", ())
    ):
        return "DETACH PARTITION CONCURRENTLY"
    names = {
        "CreatedbStmt": "CREATE DATABASE",
        "DropdbStmt": "DROP DATABASE",
        "AlterSystemStmt": "ALTER SYSTEM",
        "CreateTableSpaceStmt": "CREATE TABLESPACE",
        "DropTableSpaceStmt": "DROP TABLESPACE",
    }
    return names.get(kind)


class _CharOffsets:
    """libpg_query reports byte offsets; Python slices by character. Offsets come in
    increasing order, so each conversion decodes only the bytes since the last one."""

    def __init__(self, text: str) -> None:
        self.ascii = text.isascii()
        self.data = text.encode()
        self.last_byte = self.last_char = 0

    def __call__(self, byte: int) -> int:
        if self.ascii:
            return byte
        if byte < self.last_byte:
            self.last_byte = self.last_char = 0
        self.last_char += len(self.data[self.last_byte:byte].decode(errors="ignore"))
        self.last_byte = byte
        return self.last_char


def _lex(m: Migration, empty_ok: bool = False) -> tuple[Plan | None, list[str]]:
    # The parser's JSON, not pglast's Python node objects: the same grammar and checks
    # at a fraction of the cost (no object per parse-tree node).
    from pglast.parser import ParseError, parse_sql_json

    text = m.text
    transactional = is_transactional(text)
    try:
        tree = json.loads(parse_sql_json(text))
    except ParseError as exc:
        index = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        line, col = line_col(text, index)
        return None, [f"{m.file}:{line}:{col}: {exc.args[0]}; fix the SQL"]
    to_char = _CharOffsets(text)
    nodes: list[tuple[Node, int, int]] = []
    for raw in tree.get("stmts", ()):
        start = raw.get("stmt_location", 0)
        end = start + raw["stmt_len"] if raw.get("stmt_len") else len(to_char.data)
        offset = to_char(start)
        node = next(iter(raw["stmt"].items()))
        nodes.append((node, offset, to_char(end) - offset))
    if not nodes:
        if empty_ok:
            return Plan(m, transactional, ()), []
        return None, [f"{m.file}: contains no SQL statement (only comments); write its SQL"]

    problems: list[str] = []

    def at(offset: int) -> str:
        line, col = line_col(text, offset)
        return f"{m.file}:{line}:{col}"

    first, last = _txn_kind(nodes[0][0]), _txn_kind(nodes[-1][0])
    wrapped = (transactional and first in ("BEGIN", "START") and len(nodes) > 1
               and last == "COMMIT")
    if wrapped:
        nodes = nodes[1:-1]  # the psql-style wrapper: the runner runs the body in its own
    for node, offset, _ in nodes:
        kind = _txn_kind(node)
        if kind in ("SAVEPOINT", "RELEASE", "ROLLBACK_TO") and transactional:
            continue
        if kind is not None:
            where = "a no-transaction file" if not transactional else "the middle of a file"
            problems.append(f"{at(offset)}: transaction control ({kind.replace('_', ' ')}) in "
                            f"{where}; the runner manages the transaction, remove it")
        elif transactional and (what := _outside_transaction_only(node)):
            problems.append(f"{at(offset)}: {what} cannot run inside a transaction"
                            + _NEEDS_NEW_FILE)
    if not nodes and not problems:
        problems.append(f"{m.file}: contains no statement between BEGIN and COMMIT")
    statements = tuple(Statement(o, text[o : o + n]) for _, o, n in nodes)
    return Plan(m, transactional, statements, wrapped), problems


def lex(migrations: list[Migration], empty_ok: bool = False) -> tuple[list[Plan], list[str]]:
    """Lex every file: the plans of the good ones and every problem of every file.
    `empty_ok`: a file of comments only is a plan of no statements, not a problem (the
    sqlx format's forward files, SPEC §8)."""
    plans: list[Plan] = []
    problems: list[str] = []
    for m in migrations:
        result, found = _lex(m, empty_ok)
        problems.extend(found)
        if result is not None and not found:
            plans.append(result)
    return plans, problems


def plan(migrations: list[Migration]) -> list[Plan]:
    """Lex every file; a ValidationError lists every problem of every file."""
    plans, problems = lex(migrations)
    if problems:
        raise ValidationError(problems)
    return plans


def lex_rollbacks(migrations: list[Migration]) -> tuple[list[Plan], list[str]]:
    """The rollback plans of `migrations`, in the order given. A missing or unreadable
    rollback file is a problem like a bad statement: a rollback must know it can run every
    file before it runs the first (the same rules as forward files: BEGIN/COMMIT wrapper
    dropped, `-- migrate:no-transaction` honoured)."""
    readable: list[Migration] = []
    problems: list[str] = []
    for m in migrations:
        if m.rollback is None:
            problems.append(f"{m.file}: no rollback file (expected {m.name}_rollback.sql); "
                            "write one, or undo this migration by hand")
            continue
        try:
            readable.append(read_rollback(m))
        except ValueError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"{m.rollback.name}: cannot be read: {exc.strerror}")
    plans, found = lex(readable)
    return plans, problems + found
