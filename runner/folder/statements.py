"""Finding the statements of a migration file with PostgreSQL's own parser (pglast).

A split on `;` or a regex breaks on dollar quotes, `E''` strings, nested comments and
`BEGIN ATOMIC` bodies; the server's grammar does not. pglast is imported only when a file
must be lexed, so the no-op path of a pod start does not pay for it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from runner.errors import ValidationError
from runner.folder import split
from runner.folder.files import Migration, read_rollback

DIRECTIVES = {"migrate:no-transaction", "no-transaction"}
Node = tuple[str, dict[str, Any]]  # (node type, its fields), as libpg_query's JSON has it


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


class Statements(Sequence[Statement]):
    """A file's statements as character offsets into its text, each Statement made when
    asked for: the file is held once, not once more in copies per statement (SPEC
    §10.4)."""

    def __init__(self, text: str, bounds: array[int] | None = None) -> None:
        self.text = text
        self.bounds = bounds if bounds is not None else array("q")  # start, end, start...

    def __len__(self) -> int:
        return len(self.bounds) // 2

    @overload
    def __getitem__(self, index: int) -> Statement: ...
    @overload
    def __getitem__(self, index: slice) -> Statements: ...
    def __getitem__(self, index: int | slice) -> Statement | Statements:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("a step is not supported")
            return Statements(self.text, self.bounds[2 * start:2 * max(start, stop)])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = self.bounds[2 * index], self.bounds[2 * index + 1]
        return Statement(start, self.text[start:end])


@dataclass(frozen=True)
class Plan:
    migration: Migration
    transactional: bool
    statements: Sequence[Statement]
    wrapped: bool = False  # a psql BEGIN; ... COMMIT; wrapper was dropped (sqlx refuses it)
    # (offset, node) of what the catalog's check of partitioned relations reads, in order
    # (transaction_block.catalog_fact): the files are not parsed again for it.
    catalog: tuple[tuple[int, Node], ...] = ()


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset (CRLF counts as the line's end)."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def _lines(text: str) -> Iterator[str]:
    """The lines of `text`, one at a time (a large file is not copied into a list)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        yield text[start:end]
        start = end + 1


def is_transactional(text: str) -> bool:
    """False when a directive stands among the leading comment lines."""
    for raw in _lines(text):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        if line[2:].strip().lower() in DIRECTIVES:
            return False
    return True



def _txn_kind(node: Node) -> str | None:
    kind, body = node
    if kind != "TransactionStmt":
        return None
    return str(body.get("kind", "")).removeprefix("TRANS_STMT_")


class _File:
    """One file being lexed: its text, and `file:line:column` of an offset in it."""

    def __init__(self, m: Migration, spelling: Spelling = NATIVE) -> None:
        self.m = m
        self.spelling = spelling
        self.text = m.text
        self.problems: list[str] = []

    def at(self, offset: int) -> str:
        line, col = line_col(self.text, offset)
        return f"{self.m.file}:{line}:{col}"

    def body_line(self, body_at: int, line: int) -> str:
        """`file:line:column` of line `line` (1-based) of a function body starting at a
        character offset: the line's first non-blank character."""
        number = self.text.count("\n", 0, body_at) + line
        start = 0
        for _ in range(number - 1):
            start = self.text.find("\n", start) + 1
        end = self.text.find("\n", start)
        text = self.text[start:end if end >= 0 else None]
        return f"{self.m.file}:{number}:{len(text) - len(text.lstrip()) + 1}"

    def add(self, where: int | str, message: str) -> None:
        """A problem at a character offset, or at a place already written out."""
        place = self.at(where) if isinstance(where, int) else where
        self.problems.append(f"{place}: {message}")


def _stream_problem(stream: str) -> str:
    return (f"{stream} needs a client feeding or reading the data (psql does); the runner "
            "sends SQL only: use INSERT ... VALUES, or COPY from a file on the database "
            "server")


class _Checks:
    """Every statement against how it will run: in the file's transaction, or on its own
    in autocommit (`-- migrate:no-transaction`). Statements come one at a time and are
    not kept (SPEC §10.4); transaction control is judged at the end, when it is known
    whether a BEGIN first and a COMMIT last are a psql-style wrapper."""

    def __init__(self, f: _File, transactional: bool) -> None:
        from runner.folder import plpgsql, transaction_block

        self.f = f
        self.transactional = transactional
        self.subs = transaction_block.Subscriptions()
        self.partitioned = transaction_block.Partitioned()
        self.procs = plpgsql.Procedures()
        self.found: list[tuple[int, str]] = []  # (statement index, problem), in order
        self.control: list[tuple[int, int, str]] = []  # (index, offset, kind)
        self.streams: list[tuple[int, str]] = []  # (offset, COPY ... STDIN/STDOUT)
        self.catalog: list[tuple[int, Node]] = []  # Plan.catalog
        self.count = 0

    def add(self, where: int | str, message: str) -> None:
        place = self.f.at(where) if isinstance(where, int) else where
        self.found.append((self.count, f"{place}: {message}"))

    def check(self, st: split.Found) -> None:
        from runner.folder import transaction_block

        node, where = st.node, st.offset
        if (fact := transaction_block.catalog_fact(node)) is not None:
            self.catalog.append((where, fact))
        kind = _txn_kind(node)
        if kind is not None:
            if not (kind in ("SAVEPOINT", "RELEASE", "ROLLBACK_TO") and self.transactional):
                self.control.append((self.count, where, kind))
        else:
            if (stream := transaction_block.client_stream(node)) is not None:
                self.streams.append((where, stream))
                self.add(where, _stream_problem(stream))
            if not self.transactional:
                refusal = transaction_block.refused_outside_transaction(node)
                if refusal is not None:
                    self.add(where, f"{refusal.name} can only run inside a transaction "
                                    "block, and a no-transaction file runs each statement "
                                    "on its own; move it to a transactional file")
            else:
                refusal = transaction_block.refused_in_transaction(node, self.subs)
                if refusal is not None:
                    self.add(where, f"{refusal.name} cannot run inside a transaction block "
                                    f"(PostgreSQL refuses it with 25001){self.f.spelling.new_file}")
                elif (partitioned := self.partitioned.refusal(node)) is not None:
                    self.add(where, f"{partitioned} cannot run inside a transaction block "
                                    f"(PostgreSQL refuses it with 25001){self.f.spelling.new_file}")
                self.subs.note(node)
                self.partitioned.note(node)
                self._transaction_ends(st)
        self.count += 1

    def wrapped(self) -> bool:
        """A BEGIN first and a COMMIT last, with statements between: psql's wrapper."""
        kinds = {index: kind for index, _, kind in self.control}
        return (self.transactional and self.count > 1
                and kinds.get(0) in ("BEGIN", "START") and kinds.get(self.count - 1) == "COMMIT")

    def problems(self, wrapped: bool) -> list[str]:
        for index, where, kind in self.control:
            if wrapped and index in (0, self.count - 1):
                continue
            place = ("a no-transaction file" if not self.transactional
                     else "the middle of a file")
            self.found.append((index, f"{self.f.at(where)}: transaction control "
                                      f"({kind.replace('_', ' ')}) in {place}; the runner "
                                      "manages the transaction, remove it"))
        self.found.sort(key=lambda item: item[0])  # stable: in statement order
        return [problem for _, problem in self.found]

    def _transaction_ends(self, st: split.Found) -> None:
        """COMMIT/ROLLBACK in a DO block, or in a procedure of this file that a CALL
        reaches: refused in a transaction with 2D000 at run time."""
        from runner.folder import plpgsql

        f, procs, node = self.f, self.procs, st.node
        fix = ("; PostgreSQL allows that only outside a transaction block (else 2D000 "
               "invalid transaction termination)" + f.spelling.new_file)
        if (target := plpgsql.called(node)) is not None:
            if (end := procs.ends(target)) is not None:
                self.add(st.offset, f"CALL {target} reaches the {end.what} of procedure "
                                    f"{end.procedure} ({f.body_line(end.body_at, end.line)})"
                                    f"{fix}")
            return
        parsed = plpgsql.body_of(node, st.sql)
        if parsed is not None:
            parsed = parsed[0], st.at(parsed[1])  # the body's offset in the file
        if node[0] == "CreateFunctionStmt":
            procs.define(node, parsed)
        if parsed is None or node[0] != "DoStmt":
            return
        body, at = parsed
        if body.ends:
            line, what = body.ends[0]
            self.add(f.body_line(at, line), f"{what} inside a DO block{fix}")
        else:
            for line, target in body.calls:
                if (end := procs.ends(target)) is not None:
                    self.add(f.body_line(at, line), f"this DO block calls {target}, which "
                             f"reaches the {end.what} of procedure {end.procedure} "
                             f"({f.body_line(end.body_at, end.line)}){fix}")
                    break


def _lex(m: Migration, empty_ok: bool = False,
         spelling: Spelling = NATIVE) -> tuple[Plan | None, list[str]]:
    # Statement by statement, each parse tree dropped before the next (split.py). These
    # modules, like pglast, only when a file is lexed: a pod start with nothing pending
    # pays for none.
    from runner.folder import directives

    f = _File(m, spelling)
    text = m.text
    transactional = is_transactional(text)
    foreign = directives.foreign_directives(text, spelling.no_tx, spelling.split)
    checks = _Checks(f, transactional)
    found = Statements(text)
    try:
        for st in split.statements(text):
            checks.check(st)
            found.bounds.extend((st.offset, st.end))
    except split.SyntaxProblem as exc:
        for offset, _, problem in foreign:
            f.add(offset, problem)
        index = exc.offset
        # A psql dump's `COPY ... FROM stdin;` followed by its data lines parses up to the
        # data: name the COPY, not only the first data line.
        line_start = text.rfind("\n", 0, index) + 1
        for offset, stream in checks.streams:
            if offset < line_start:
                f.add(offset, _stream_problem(stream))
        psql_only = directives.psql_only(text, index)
        for offset, problem in psql_only:
            f.add(offset, problem)
        if not psql_only:
            f.add(index, f"{exc.message}; fix the SQL")
        return None, f.problems
    rollback = m.file.endswith(("_rollback.sql", ".down.sql"))
    for offset, rule, problem in foreign:
        if not (rule.down and rollback and (not found or offset < found[0].offset)):
            f.add(offset, problem)
    if not found:
        if empty_ok and not f.problems:
            return Plan(m, transactional, ()), []
        f.add(m.file, "contains no SQL statement (only comments); write its SQL")
        return None, f.problems

    wrapped = checks.wrapped()
    if wrapped:
        found = found[1:-1]  # the psql-style wrapper: the runner runs the body in its own
    f.problems += checks.problems(wrapped)
    if not found and not f.problems:
        f.problems.append(f"{m.file}: contains no statement between BEGIN and COMMIT")
    return Plan(m, transactional, found, wrapped, tuple(checks.catalog)), f.problems


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
