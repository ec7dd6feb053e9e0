"""The first draft of a rollback file, from the forward file's parse tree (issue 14).

Every object the forward file creates (runner.drafting.inverse) is dropped in reverse order of
creation: each object goes before the objects it was built on, so no blanket CASCADE is
needed. A part of a table created in the same file goes with the table, unless it refers
to an object created after the table: that object is dropped first, so the part is dropped
before it, or — when the part has no name to drop it by — that object is dropped with
CASCADE and a comment saying why. What cannot be undone stays a comment at its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pglast
from pglast.enums import DropBehavior
from pglast.stream import RawStream

from runner.drafting.inverse import Created, Inverter, Note
from runner.folder.statements import Plan, line_col


@dataclass
class Draft:
    statements: list[str]  # the body in order: DROP statements and comment lines
    no_transaction: bool  # it holds a DROP INDEX CONCURRENTLY
    needs_review: list[Note]  # every line a person must look at, in file order
    drops: int
    squawk_rules: list[str]  # the ban-drop-* rules of squawk (the folder's linter) it trips


# squawk flags every DROP of these; in a rollback file dropping is the point.
_SQUAWK = {"OBJECT_TABLE": "ban-drop-table", "OBJECT_FUNCTION": "ban-drop-function",
           "OBJECT_PROCEDURE": "ban-drop-function", "OBJECT_SCHEMA": "ban-drop-schema",
           "OBJECT_TYPE": "ban-drop-type", "OBJECT_DOMAIN": "ban-drop-domain",
           "OBJECT_VIEW": "ban-drop-view", "OBJECT_MATVIEW": "ban-drop-view",
           "OBJECT_SEQUENCE": "ban-drop-sequence", "OBJECT_EXTENSION": "ban-drop-extension",
           "AT_DropColumn": "ban-drop-column", "AT_DropConstraint": "ban-drop-constraint"}
# All of them, for the stub `new` writes before any statement is known.
SQUAWK_DROP_RULES = sorted(set(_SQUAWK.values()))


def _squawk_rule(drop: Any) -> str | None:
    if type(drop).__name__ == "DropStmt":
        return _SQUAWK.get(drop.removeType.name)
    return _SQUAWK.get(drop.cmds[0].subtype.name)


def _resolve(items: list[Created | Note]) -> list[Created]:
    """The objects to drop explicitly; marks those that need CASCADE."""
    index = {id(item): i for i, item in enumerate(items)}
    emitted = []
    for item in items:
        if not isinstance(item, Created) or item.gone or (item.owner and item.owner.gone):
            continue  # a note, or dropped by the forward file itself (or with its table)
        if item.owner is None:
            emitted.append(item)
            continue
        # Refers to an object created after its table: that object is dropped before the
        # table, so this part must go first, or go with that object by CASCADE.
        later = [d for d in item.deps if index[id(d)] > index[id(item.owner)]]
        if later and item.drop is not None:
            emitted.append(item)
        elif later:
            for dep in later:
                dep.cascade_for.append(item)
    return emitted


def _render(items: list[Created | Note]) -> Draft:
    emitted = _resolve(items)
    chosen = {id(o) for o in emitted}
    no_transaction = any(o.concurrent for o in emitted)
    out: list[str] = []
    for item in reversed(items):
        if isinstance(item, Note):
            out.append(f"-- cannot undo automatically: {item.what} at line {item.line} — "
                       f"{item.why}")
            continue
        if id(item) not in chosen:
            continue
        if item.review:
            out.append(f"-- review: {item.what} at line {item.line} used {item.review}")
        for dependant in item.cascade_for:
            out.append(f"-- CASCADE: {dependant.what} at line {dependant.line} depends on it "
                       "and has no name to drop it by")
            item.drop.behavior = DropBehavior.DROP_CASCADE
        if no_transaction:  # each statement commits alone: a re-run must skip what is gone
            target = item.drop if type(item.drop).__name__ == "DropStmt" else item.drop.cmds[0]
            target.missing_ok = True
        out.append(RawStream()(item.drop) + ";")
    review = [i for i in items if isinstance(i, Note)]
    review += [Note(o.line, o.what, o.review) for o in emitted if o.review]
    rules = {_squawk_rule(o.drop) for o in emitted} - {None}
    return Draft(out, no_transaction, sorted(review, key=lambda n: n.line), len(emitted),
                 sorted(r for r in rules if r))


def draft(plan: Plan) -> Draft:
    """The rollback draft of a lexed forward file (its statements in file order, the
    BEGIN/COMMIT wrapper already dropped). Pure: touches no file and no database. The
    plan's statements were parsed once already, so pglast raises nothing here."""
    inverter = Inverter(plan.transactional)
    for statement in plan.statements:
        line = line_col(plan.migration.text, statement.offset)[0]
        for raw in pglast.parse_sql(statement.sql):
            inverter.statement(raw.stmt, line)
    return _render(inverter.items)
