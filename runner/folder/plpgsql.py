"""COMMIT and ROLLBACK inside PL/pgSQL: a `DO` block, or a procedure a file creates and
then CALLs, may end transactions only when it runs outside a transaction block
(PostgreSQL's "non-atomic" context, plpgsql's exec_stmt_commit/exec_stmt_rollback). In a
transactional migration it fails with 2D000 "invalid transaction termination" — at run
time, after the files before it were applied. pglast parses PL/pgSQL bodies, so the file
is refused at validation instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Node = tuple[str, dict[str, Any]]

_ENDS = {"PLpgSQL_stmt_commit": "COMMIT", "PLpgSQL_stmt_rollback": "ROLLBACK"}


@dataclass
class Body:
    ends: list[tuple[int, str]] = field(default_factory=list)  # (line in body, COMMIT/...)
    calls: list[tuple[int, str]] = field(default_factory=list)  # (line in body, procedure)


def _name(funcname: list[dict[str, Any]]) -> str:
    # Unqualified: a file's own procedures are usually called as they were created.
    return str(funcname[-1]["String"]["sval"]) if funcname else ""


def called(node: Node) -> str | None:
    """The procedure a top-level CALL names."""
    kind, body = node
    if kind != "CallStmt":
        return None
    return _name(body.get("funccall", {}).get("funcname", []))


def _walk(tree: Any, found: Body) -> None:
    if isinstance(tree, list):
        for item in tree:
            _walk(item, found)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            if key in _ENDS:
                found.ends.append((int(value.get("lineno", 1)), _ENDS[key]))
            elif key == "PLpgSQL_stmt_call":
                target = _call_target(value.get("expr", {}).get("PLpgSQL_expr", {}))
                if target:
                    found.calls.append((int(value.get("lineno", 1)), target))
            _walk(value, found)


def _call_target(expr: dict[str, Any]) -> str | None:
    from pglast.parser import ParseError, parse_sql_json

    try:
        stmts = json.loads(parse_sql_json(str(expr.get("query", "")))).get("stmts", [])
    except ParseError:
        return None
    return called(next(iter(stmts[0]["stmt"].items()))) if stmts else None


def body_of(node: Node, sql: str) -> tuple[Body, int] | None:
    """For a PL/pgSQL `DO` or `CREATE PROCEDURE`: its COMMIT/ROLLBACK and CALL statements
    and the byte offset of its body in the statement's text (plpgsql numbers lines from the body's
    first line). None for anything else, or a body pglast cannot parse (the server will
    say why when it runs)."""
    kind, stmt = node
    if kind == "DoStmt":
        options = stmt.get("args", [])
    elif kind == "CreateFunctionStmt" and stmt.get("is_procedure"):
        options = stmt.get("options", [])
    else:
        return None
    from pglast.parser import ParseError, parse_plpgsql_json

    elems = {e["DefElem"]["defname"]: e["DefElem"] for e in options if "DefElem" in e}
    language = elems.get("language", {}).get("arg", {}).get("String", {}).get("sval", "plpgsql")
    where = elems.get("as", {})
    if language.lower() != "plpgsql" or not where:
        return None
    try:
        functions = json.loads(parse_plpgsql_json(sql))
    except ParseError:
        return None
    found = Body()
    _walk(functions, found)
    at = where.get("arg_location", -1)
    return found, at if at >= 0 else where.get("location", 0)


@dataclass(frozen=True)
class End:
    procedure: str
    body_at: int  # character offset of the procedure's body in the file
    line: int  # in the body (1: the line its opening quote stands on)
    what: str  # COMMIT or ROLLBACK


class Procedures:
    """The PL/pgSQL procedures a file created so far, to follow its CALLs (and the CALLs
    inside them) to a COMMIT or ROLLBACK."""

    def __init__(self) -> None:
        self.bodies: dict[str, tuple[Body, int]] = {}

    def define(self, node: Node, parsed: tuple[Body, int] | None) -> None:
        """A CREATE [OR REPLACE] FUNCTION/PROCEDURE; `parsed` None: nothing to follow
        (another language, or a function, which cannot end a transaction)."""
        name = _name(node[1].get("funcname", []))
        if parsed is None:
            self.bodies.pop(name, None)
        else:
            self.bodies[name] = parsed

    def ends(self, procedure: str, seen: frozenset[str] = frozenset()) -> End | None:
        """The first COMMIT or ROLLBACK that `CALL procedure` reaches, if it reaches one."""
        if procedure in seen or procedure not in self.bodies:
            return None
        body, at = self.bodies[procedure]
        if body.ends:
            line, what = body.ends[0]
            return End(procedure, at, line, what)
        for _, target in body.calls:
            if (deeper := self.ends(target, seen | {procedure})) is not None:
                return deeper
        return None
