"""A file's statements, one at a time, in memory bounded by the largest statement (SPEC
§10.4).

The parse tree of a whole file, as JSON and then as Python objects, takes some 50 times
the file (a 3.9 MB file of multi-row INSERTs peaked at 284 MB). So PostgreSQL's scanner
first cuts the file at its top-level semicolons (libpg_query's split with the scanner:
no tree), and each piece is parsed on its own, its tree dropped before the next one.
The scanner cuts inside a `BEGIN ATOMIC ... END` body, whose semicolons only the
grammar tells from a statement's end: a piece the parser finds cut short ("at end of
input") is parsed again with the pieces after it, doubling, until it parses or reaches
the end of the file. No check looks into an INSERT: a large one is only checked to parse
(in C: no JSON, no Python objects), and every INSERT's node is given without its fields,
so what the checks see does not depend on the statement's size.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Node = tuple[str, dict[str, Any]]  # (node type, its fields), as libpg_query's JSON has it

# Every byte of a multi-byte UTF-8 character as `x`: the same token boundaries (such
# characters only occur in identifiers, strings and comments) and character offsets that
# are the UTF-8 byte offsets, so pglast's split never maps bytes to characters itself
# (its map costs a tuple per byte of such characters).
_ASCII = bytes(range(128)) + b"x" * 128
_INSERT: Node = ("InsertStmt", {})  # an INSERT's node as the checks get it
_HEAD = 32  # characters of a piece first scanned to find its first keyword, then 4x more
# A piece this long is looked at before it is parsed: an INSERT of bulk data is then only
# checked to parse. A shorter one parses faster than its first keyword is found.
_LARGE = 4096
_CHUNK = 1 << 20  # characters of the file scanned at a time


class Offsets:
    """libpg_query reports byte offsets; Python slices by character. Offsets come in
    increasing order, so each conversion decodes only the bytes since the last one."""

    def __init__(self, text: str) -> None:
        self.ascii = text.isascii()
        self.data = b"" if self.ascii else text.encode()
        self.last_byte = self.last_char = 0

    def __call__(self, byte: int) -> int:
        if self.ascii:
            return byte
        if byte < self.last_byte:
            self.last_byte = self.last_char = 0
        self.last_char += len(self.data[self.last_byte:byte].decode(errors="ignore"))
        self.last_byte = byte
        return self.last_char


@dataclass(frozen=True)
class Found:
    """One statement: its node and where it stands in the file (character offsets of
    its first token and of its end); `group`, the text parsed, starts at `base`, and
    `chars` turns a byte location of the node into a character offset in it."""

    node: Node
    offset: int
    end: int
    group: str
    base: int
    chars: Offsets

    @property
    def sql(self) -> str:
        return self.group[self.offset - self.base:self.end - self.base]

    def at(self, byte: int) -> int:
        """The file's character offset of a byte location in this statement's node."""
        return self.base + self.chars(byte)


class SyntaxProblem(Exception):
    """The parser's message and the character offset in the file where it stopped."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message, offset)
        self.message = message
        self.offset = offset


def first_keyword(piece: str) -> tuple[str, int] | None:
    """The first token after the comments and semicolons, and its offset; None when the
    piece has none, or cannot be scanned. Scanned from a head of the piece, four times
    longer each time the head cuts a comment or string short or ends at that token, whose
    name a cut could change (`INSERT` cut to `INS` is an identifier)."""
    from pglast.parser import ParseError, scan

    size = _HEAD
    while True:
        head = piece[:size]
        whole = len(head) == len(piece)
        try:
            tokens = scan(head)
        except ParseError:  # cut a comment or a string short, or a token it cannot read
            if whole:
                return None
            size *= 4
            continue
        first = next((t for t in tokens
                      if t.name not in ("SQL_COMMENT", "C_COMMENT", "ASCII_59")), None)
        if whole or (first is not None and first.end + 1 < len(head)):
            return (first.name, first.start) if first is not None else None
        size *= 4


def _parse(group: str, base: int) -> list[Found]:
    """The statements of `group` (at character `base` of the file); ParseError when it
    does not parse."""
    from pglast.parser import parse_sql_json, split

    if len(group) > _LARGE:
        first = first_keyword(group)
        if first is not None and first[0] == "INSERT" and len(split(group)) == 1:
            return [Found(_INSERT, base + first[1], base + len(group), group, base,
                          Offsets(""))]
    tree = json.loads(parse_sql_json(group))
    chars = Offsets(group)
    found: list[Found] = []
    for raw in tree.get("stmts", ()):
        location = raw.get("stmt_location", 0)
        start = chars(location)
        end = chars(location + raw["stmt_len"]) if raw.get("stmt_len") else len(group)
        node = next(iter(raw["stmt"].items()))
        found.append(Found(_INSERT if node[0] == "InsertStmt" else node, base + start,
                           base + end, group, base, chars))
    return found


def _ends(text: str) -> Iterator[int]:
    """The character offsets where the scanner ends a statement (a top-level `;`), a
    chunk of the file at a time. A chunk's last piece, which its end may cut short, is
    scanned again with the next chunk; a chunk with no whole piece is scanned again twice
    as long. A token the scanner cannot read (an unterminated quote or comment) ends the
    ends: the parser then reports it, or the syntax error before it."""
    from pglast.parser import ParseError, split

    pos, size = 0, _CHUNK
    while pos < len(text):
        chunk = text[pos:pos + size]
        at_end = pos + len(chunk) >= len(text)
        scanned = chunk if chunk.isascii() else chunk.encode().translate(_ASCII).decode("ascii")
        clean = True
        try:
            pieces = split(scanned, with_parser=False, only_slices=True)
        except ParseError as exc:
            clean = False
            try:
                pieces = split(scanned[:_index(exc, 0)], with_parser=False, only_slices=True)
            except ParseError:
                pieces = ()
        stops = [piece.stop for piece in pieces]
        if not (at_end and clean):
            del stops[-1:]
        chars = Offsets(chunk)
        ends = [pos + chars(stop) for stop in stops]
        yield from ends
        if at_end:
            return
        if ends:
            pos, size = ends[-1], _CHUNK
        else:
            size *= 2


def statements(text: str) -> Iterator[Found]:
    """Every statement of `text`, in order; SyntaxProblem where it stops parsing."""
    from pglast.parser import ParseError

    # The scanner leaves out a piece without a keyword (`SELEC 2;`, a comment alone), so
    # the pieces only say where statements end: each group parsed runs from the end of
    # the one before, and the text after the last piece is parsed too.
    ends = array("q", _ends(text))
    if not ends or ends[-1] < len(text):
        ends.append(len(text))
    start = i = 0
    while i < len(ends):
        j = i
        while True:
            group = text[start:ends[j]]
            try:
                found = _parse(group, start)
                break
            except ParseError as exc:
                cut_short = "at end of input" in exc.args[0]
                if cut_short and j + 1 < len(ends):
                    j = min(j + (j - i + 1), len(ends) - 1)  # twice as many pieces
                    continue
                # No place given ("at end of input"): the statement cut short.
                first = first_keyword(group)
                at = _index(exc, first[1] if first else 0)
                raise SyntaxProblem(exc.args[0], start + at) from None
        del group
        yield from found
        start, i = ends[j], j + 1


def _index(exc: Exception, default: int) -> int:
    """The character offset a ParseError gives, if any."""
    index = exc.args[1] if len(exc.args) > 1 else None
    return index if isinstance(index, int) else default
