"""Finding the statements of a migration file with PostgreSQL's own parser (pglast).

A split on `;` or a regex breaks on dollar quotes, `E''` strings, nested comments and
`BEGIN ATOMIC` bodies; the server's grammar does not. pglast is imported only when a file
must be lexed, so the no-op path of a pod start does not pay for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.errors import ValidationError
from runner.folder.files import Migration, read_rollback

if TYPE_CHECKING:
    from runner.folder import plpgsql

DIRECTIVES = {"migrate:no-transaction", "no-transaction"}


@dataclass(frozen=True)
class Spelling:
    """How the advice names the no-transaction directive and the rollback layout: the
    runner's own, or sqlx's in the sqlx format (SPEC §8), so that following it works."""

    new_file: str  # fix for a statement that cannot run in the file's transaction
    no_tx: str | None = None  # fix for another tool's no-transaction directive
    split: str | None = None  # fix for another tool's down section (None: the runner's)


NATIVE = Spelling("; move it to its own file whose first line is `-- migrate:no-transaction`")


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


class _File:
    """One file being lexed: its text, and `file:line:column` of an offset in it."""

    def __init__(self, m: Migration, spelling: Spelling = NATIVE) -> None:
        self.m = m
        self.spelling = spelling
        self.text = m.text
        self.chars = _CharOffsets(m.text)
        self.problems: list[str] = []

    def at(self, offset: int) -> str:
        line, col = line_col(self.text, offset)
        return f"{self.m.file}:{line}:{col}"

    def body_line(self, body_byte: int, line: int) -> str:
        """`file:line:column` of line `line` (1-based) of a function body starting at a
        byte offset: the line's first non-blank character."""
        number = self.chars.data.count(b"\n", 0, body_byte) + line
        start = 0
        for _ in range(number - 1):
            start = self.text.find("\n", start) + 1
        text = self.text[start:].split("\n", 1)[0]
        return f"{self.m.file}:{number}:{len(text) - len(text.lstrip()) + 1}"

    def add(self, where: int | str, message: str) -> None:
        """A problem at a character offset, or at a place already written out."""
        place = self.at(where) if isinstance(where, int) else where
        self.problems.append(f"{place}: {message}")


def _copy_before(f: _File, prefix: str) -> None:
    """A psql dump's `COPY ... FROM stdin;` followed by its data lines parses up to the
    data: name the COPY, not only the first data line, when the lines before parse."""
    from pglast.parser import ParseError, parse_sql_json

    from runner.folder import transaction_block

    try:
        tree = json.loads(parse_sql_json(prefix))
    except ParseError:
        return
    chars = _CharOffsets(prefix)
    for raw in tree.get("stmts", ()):
        node = next(iter(raw["stmt"].items()))
        if (stream := transaction_block.client_stream(node)) is not None:
            f.add(chars(raw.get("stmt_location", 0)), _stream_problem(stream))


def _stream_problem(stream: str) -> str:
    return (f"{stream} needs a client feeding or reading the data (psql does); the runner "
            "sends SQL only: use INSERT ... VALUES, or COPY from a file on the database "
            "server")


def _check(f: _File, nodes: list[tuple[Node, int, int]], transactional: bool) -> None:
    """Every statement against how it will run: in the file's transaction, or on its own
    in autocommit (`-- migrate:no-transaction`)."""
    from runner.folder import plpgsql, transaction_block

    subs = transaction_block.Subscriptions()
    procs = plpgsql.Procedures()
    for node, offset, length in nodes:
        where = offset  # written out only for a problem: line_col counts from the start
        kind = _txn_kind(node)
        if kind in ("SAVEPOINT", "RELEASE", "ROLLBACK_TO") and transactional:
            continue
        if kind is not None:
            place = "a no-transaction file" if not transactional else "the middle of a file"
            f.add(where, f"transaction control ({kind.replace('_', ' ')}) in {place}; the "
                         "runner manages the transaction, remove it")
            continue
        if (stream := transaction_block.client_stream(node)) is not None:
            f.add(where, _stream_problem(stream))
        if not transactional:
            if (refusal := transaction_block.refused_outside_transaction(node)) is not None:
                f.add(where, f"{refusal.name} can only run inside a transaction block, and a "
                             "no-transaction file runs each statement on its own; move it "
                             "to a transactional file")
            continue
        if (refusal := transaction_block.refused_in_transaction(node, subs)) is not None:
            f.add(where, f"{refusal.name} cannot run inside a transaction block (PostgreSQL "
                         f"refuses it with 25001){f.spelling.new_file}")
        subs.note(node)
        _transaction_ends(f, procs, node, where, f.text[offset:offset + length])


def _transaction_ends(f: _File, procs: plpgsql.Procedures, node: Node, where: int,
                      sql: str) -> None:
    """COMMIT/ROLLBACK in a DO block, or in a procedure of this file that a CALL reaches:
    refused in a transaction with 2D000 at run time."""
    from runner.folder import plpgsql

    fix = ("; PostgreSQL allows that only outside a transaction block (else 2D000 "
           "invalid transaction termination)" + f.spelling.new_file)
    if (target := plpgsql.called(node)) is not None:
        if (end := procs.ends(target)) is not None:
            f.add(where, f"CALL {target} reaches the {end.what} of procedure {end.procedure} "
                         f"({f.body_line(end.body_at, end.line)}){fix}")
        return
    parsed = plpgsql.body_of(node, sql)
    if node[0] == "CreateFunctionStmt":
        procs.define(node, parsed)
    if parsed is None or node[0] != "DoStmt":
        return
    body, at = parsed
    if body.ends:
        line, what = body.ends[0]
        f.add(f.body_line(at, line), f"{what} inside a DO block{fix}")
    else:
        for line, target in body.calls:
            if (end := procs.ends(target)) is not None:
                f.add(f.body_line(at, line), f"this DO block calls {target}, which reaches "
                      f"the {end.what} of procedure {end.procedure} "
                      f"({f.body_line(end.body_at, end.line)}){fix}")
                break


def _lex(m: Migration, empty_ok: bool = False,
         spelling: Spelling = NATIVE) -> tuple[Plan | None, list[str]]:
    # The parser's JSON, not pglast's Python node objects: the same grammar and checks
    # at a fraction of the cost (no object per parse-tree node). These modules, like
    # pglast, only when a file is lexed: a pod start with nothing pending pays for none.
    from pglast.parser import ParseError, parse_sql_json

    from runner.folder import directives

    f = _File(m, spelling)
    text = m.text
    transactional = is_transactional(text)
    foreign = directives.foreign_directives(text, spelling.no_tx, spelling.split)
    try:
        tree = json.loads(parse_sql_json(text))
    except ParseError as exc:
        for offset, _, problem in foreign:
            f.add(offset, problem)
        index = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        _copy_before(f, text[:text.rfind("\n", 0, index) + 1])
        psql_only = directives.psql_only(text, index)
        for offset, problem in psql_only:
            f.add(offset, problem)
        if not psql_only:
            f.add(index, f"{exc.args[0]}; fix the SQL")
        return None, f.problems
    to_char = f.chars
    nodes: list[tuple[Node, int, int]] = []
    for raw in tree.get("stmts", ()):
        start = raw.get("stmt_location", 0)
        end = start + raw["stmt_len"] if raw.get("stmt_len") else len(to_char.data)
        offset = to_char(start)
        node = next(iter(raw["stmt"].items()))
        nodes.append((node, offset, to_char(end) - offset))
    rollback = m.file.endswith(("_rollback.sql", ".down.sql"))
    for offset, rule, problem in foreign:
        if not (rule.down and rollback and (not nodes or offset < nodes[0][1])):
            f.add(offset, problem)
    if not nodes:
        if empty_ok and not f.problems:
            return Plan(m, transactional, ()), []
        f.add(m.file, "contains no SQL statement (only comments); write its SQL")
        return None, f.problems

    first, last = _txn_kind(nodes[0][0]), _txn_kind(nodes[-1][0])
    wrapped = (transactional and first in ("BEGIN", "START") and len(nodes) > 1
               and last == "COMMIT")
    if wrapped:
        nodes = nodes[1:-1]  # the psql-style wrapper: the runner runs the body in its own
    _check(f, nodes, transactional)
    if not nodes and not f.problems:
        f.problems.append(f"{m.file}: contains no statement between BEGIN and COMMIT")
    statements = tuple(Statement(o, text[o : o + n]) for _, o, n in nodes)
    return Plan(m, transactional, statements, wrapped), f.problems


def lex(migrations: list[Migration], empty_ok: bool = False,
        spelling: Spelling = NATIVE) -> tuple[list[Plan], list[str]]:
    """Lex every file: the plans of the good ones and every problem of every file.
    `empty_ok`: a file of comments only is a plan of no statements, not a problem (the
    sqlx format's files, SPEC §8); `spelling`: the format's names in the advice."""
    plans: list[Plan] = []
    problems: list[str] = []
    for m in migrations:
        result, found = _lex(m, empty_ok, spelling)
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
