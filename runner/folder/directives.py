"""Comments that other migration tools read as instructions, and psql meta-commands.

A file written for dbmate, goose, Atlas... may carry markers that tool obeys: a down
section in the same file, "run me outside a transaction", a custom statement delimiter.
The runner would silently ignore them — run the down section right after the up one,
or run in a transaction what was meant to run without — so a marker that changes what
runs or how is a validation error naming the tool and the fix. Markers that change
neither (`-- +goose Up` alone, `-- +goose StatementBegin`, `-- atlas:txmode file`,
graphile-migrate's `--! Previous:`) are left alone.

Only comment tokens of PostgreSQL's own scanner are looked at, so a marker inside a
string or a function body is no marker. Each pattern is matched against one whole
`--` comment, case-insensitively, as the tool's documentation spells it.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

_SPLIT = ("split the file: the part above it into NNN_name.up.sql, the part below into "
          "NNN_name.down.sql (or NNN_name.sql and NNN_name_rollback.sql)")
_NO_TX = "make `-- migrate:no-transaction` the file's first line instead"
_DOWN = "starts a down migration in the same file; here it would run right after the up part"
_NOT_IN_TX = "runs the file outside a transaction; here it would run inside one"


@dataclass(frozen=True)
class Foreign:
    tool: str
    pattern: re.Pattern[str]
    does: str
    fix: str

    @property
    def down(self) -> bool:
        """Marks the start of a down migration: harmless at the head of a rollback file
        (a dbmate file split in two often keeps it)."""
        return self.does == _DOWN


def _rule(tool: str, pattern: str, does: str, fix: str) -> Foreign:
    return Foreign(tool, re.compile(pattern, re.IGNORECASE), does, fix)


FOREIGN = [
    # dbmate README, "Creating Migrations" / "Options"
    _rule("dbmate", r"--\s*migrate:down\b.*", _DOWN, _SPLIT),
    _rule("dbmate", r"--\s*migrate:up\b.*\btransaction:\s*false\b.*", _NOT_IN_TX, _NO_TX),
    # goose: pressly.github.io/goose/documentation/annotations
    _rule("goose", r"--\s*\+goose\s+down\b.*", _DOWN, _SPLIT),
    _rule("goose", r"--\s*\+goose\s+no\s+transaction\b.*", _NOT_IN_TX, _NO_TX),
    _rule("goose", r"--\s*\+goose\s+envsub\s+on\b.*",
          "substitutes environment variables into the SQL; here the text runs as written",
          "write the values into the file"),
    # sql-migrate README, "Writing migrations"
    _rule("sql-migrate", r"--\s*\+migrate\s+down\b.*", _DOWN, _SPLIT),
    _rule("sql-migrate", r"--\s*\+migrate\s+up\b.*\bnotransaction\b.*", _NOT_IN_TX, _NO_TX),
    # Atlas: atlasgo.io/versioned/apply (txmode), atlasgo.io/versioned/new (delimiter)
    _rule("Atlas", r"--\s*atlas:txmode\s+none\b.*", _NOT_IN_TX, _NO_TX),
    _rule("Atlas", r"--\s*atlas:delimiter\b.*",
          "ends statements with another delimiter; here PostgreSQL's parser finds them",
          "remove it and end each statement with `;` (dollar-quoted bodies need nothing)"),
    # graphile-migrate README, "Special comments"
    _rule("graphile-migrate", r"--!\s*no-transaction\b.*", _NOT_IN_TX, _NO_TX),
    _rule("graphile-migrate", r"--!\s*include\b.*",
          "pastes in another file; here only this file's text runs",
          "put that file's SQL here"),
    # yoyo documentation, "Migration files" (SQL format)
    _rule("yoyo", r"--\s*transactional\s*:\s*false\b.*", _NOT_IN_TX, _NO_TX),
    _rule("yoyo", r"--\s*depends\s*:.*",
          "orders migrations by dependency; here they run in version order",
          "remove it and give this file a version after the ones it depends on"),
    # Liquibase, "Example SQL changelog" (formatted SQL)
    _rule("Liquibase", r"--\s*changeset\b.*\brunInTransaction\s*:\s*false\b.*", _NOT_IN_TX,
          _NO_TX),
    _rule("Liquibase", r"--\s*precondition-.*",
          "makes the changeset conditional; here every statement runs",
          "write the condition in SQL (IF NOT EXISTS, or a DO block)"),
    # node-pg-migrate, SQL migration files
    _rule("node-pg-migrate", r"--\s*down\s+migration\s*", _DOWN, _SPLIT),
    # tern README, "Migrations"
    _rule("tern", r"----\s*create\s+above\s*/\s*drop\s+below\s*----\s*", _DOWN, _SPLIT),
    _rule("tern", r"----\s*tern:\s*disable-tx\s*----\s*", _NOT_IN_TX, _NO_TX),
    # postgres-migrations README
    _rule("postgres-migrations", r"--\s*postgres-migrations\s+disable-transaction\b.*",
          _NOT_IN_TX, _NO_TX),
    # shmig README
    _rule("shmig", r"--\s*====\s*down\s*====\s*", _DOWN, _SPLIT),
]


def foreign(comment: str) -> Foreign | None:
    """The other tool's directive this `--` comment is, if any."""
    text = comment.rstrip()
    return next((f for f in FOREIGN if f.pattern.fullmatch(text)), None)


_META_FIX = {
    "c": "a migration runs in the database DATABASE_URL names; remove it",
    "connect": "a migration runs in the database DATABASE_URL names; remove it",
    "i": "put that file's SQL here, or make it a migration of its own",
    "ir": "put that file's SQL here, or make it a migration of its own",
    "include": "put that file's SQL here, or make it a migration of its own",
    "include_relative": "put that file's SQL here, or make it a migration of its own",
    "set": "write the value into the SQL",
    "copy": "use INSERT ... VALUES, or COPY from a file on the database server",
}


def meta_command(text: str, start: int) -> str:
    """The message for a psql meta-command whose backslash stands at `start` of `text`
    (a character offset). psql runs these itself and never sends them to the server."""
    end = start + 1
    while end < len(text) and not text[end].isspace():
        end += 1
    word = text[start:end]
    if word == "\\.":
        return ("`\\.` ends COPY ... FROM STDIN data written into the file, which only psql "
                "feeds to the server; the runner sends SQL only: use INSERT ... VALUES, or "
                "COPY from a file on the database server")
    fix = _META_FIX.get(word[1:].lower(), "remove it, or do in SQL what it did")
    return (f"`{word}` is a psql meta-command; the runner sends SQL to the server only, "
            f"without psql: {fix}")


@dataclass(frozen=True)
class Token:
    start: int  # character offset in the file
    end: int  # character offset just past it
    name: str  # the scanner's: SQL_COMMENT, IDENT, ASCII_92 (a backslash)...
    keyword: bool


# Every byte of a multi-byte UTF-8 character as `x`: the same token boundaries (such
# characters only occur in identifiers, strings and comments, where `x` is as good) and
# byte offsets, without pglast's scan slowing down on non-ASCII text.
_ASCII = bytes(range(128)) + b"x" * 128


def _char_of(text: str) -> Callable[[int], int]:
    """The character offset in `text` of a byte offset of its UTF-8 form."""
    if text.isascii():
        return lambda byte: byte
    starts = list(accumulate((len(c.encode()) for c in text), initial=0))
    return lambda byte: bisect_right(starts, byte) - 1


_KEPT = {"SQL_COMMENT", "ASCII_92", "ASCII_58"}  # `--` comments, `\\`, `:`


def tokens(text: str) -> list[Token]:
    """The `--` comments, backslashes and colons (with the token after each) that
    PostgreSQL's own scanner finds in a file. Where it cannot go on
    (an unterminated quote; `002_seed.sql` after `\\i`), the tokens up to there, and,
    when a meta-command's backslash stands on that line, on from the next line: psql
    reads a meta-command's arguments to the end of its line."""
    from pglast.parser import ParseError, scan

    data = text.encode().translate(_ASCII).decode("ascii")
    raw: list[tuple[int, int, str, bool]] = []
    pos = 0
    while pos < len(data):
        chunk, stop = data[pos:], None
        try:
            found = scan(chunk)
        except ParseError as exc:
            stop = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
            try:
                found = scan(chunk[:stop])
            except ParseError:
                break
        after_colon = False
        for t in found:  # only what the checks below look at: a big file has many tokens
            if after_colon or t.name in _KEPT:
                raw.append((pos + t.start, pos + t.end + 1, t.name, t.kind != "NO_KEYWORD"))
            after_colon = t.name == "ASCII_58"
        if stop is None:
            break
        line = data.rfind("\n", 0, pos + stop) + 1
        if not any(name == "ASCII_92" and start >= line for start, _, name, _ in raw):
            break
        pos = data.find("\n", pos + stop) + 1
        if pos == 0:
            break
    char = _char_of(text)
    return [Token(char(start), char(end), name, keyword) for start, end, name, keyword in raw]


_ANYWHERE = re.compile("|".join(f.pattern.pattern for f in FOREIGN), re.IGNORECASE)


def foreign_directives(text: str, no_tx: str | None = None, split: str | None = None
                       ) -> list[tuple[int, Foreign, str]]:
    """(offset, rule, problem) for each `--` comment that is another tool's directive.
    `no_tx` and `split`: the fixes in the folder's format's spelling (the sqlx format
    names sqlx's directive and layout, SPEC §8). The scanner, which tells a comment from
    a string, runs only when the text has a candidate at all."""
    if not _ANYWHERE.search(text):
        return []
    problems = []
    for token in tokens(text):
        if token.name == "SQL_COMMENT" and (rule := foreign(text[token.start:token.end])):
            comment = text[token.start:token.end].strip()
            fix = {_NO_TX: no_tx or _NO_TX, _SPLIT: split or _SPLIT}.get(rule.fix, rule.fix)
            problems.append((token.start, rule, f"`{comment}` is a {rule.tool} directive: "
                                                f"it {rule.does}; {fix}"))
    return problems


def psql_only(text: str, error: int) -> list[tuple[int, str]]:
    """(offset, problem) for what psql would have handled itself in a file the parser
    refused: meta-commands (a backslash outside strings and comments), and a `:name`
    variable where the parser stopped (`error`, a character offset)."""
    problems = []
    found = tokens(text)
    for i, token in enumerate(found):
        if token.name == "ASCII_92":
            problems.append((token.start, meta_command(text, token.start)))
        elif (token.name == "ASCII_58" and token.start == error and i + 1 < len(found)
              and found[i + 1].start == token.end
              and (found[i + 1].name in ("IDENT", "SCONST") or found[i + 1].keyword)):
            problems.append((token.start, "a psql variable (`:name`); the runner sends SQL "
                                          "to the server only, without psql: write the "
                                          "value into the SQL"))
    return problems
