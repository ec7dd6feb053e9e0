"""`status`: every migration and its state, as a table or one JSON document (SPEC §4).

Read-only: no lock, nothing created (a database the runner never touched shows every
file pending), only SELECTs on the bookkeeping tables. It reports what it found and exits
0, even when some rows need an operator: deciding is `migrate`'s and `validate`'s job,
unless `--exit-code` asks for the verdict (as dbmate's `status --exit-code`), for CI.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import psycopg
from psycopg import sql

from runner.commands import read_only, settle, warn_eol_only
from runner.errors import PENDING, VALIDATION, ConfigError
from runner.folder import files
from runner.histories.history import Applied, Comparison, History, compare, named
from runner.output import log
from runner.session import silence
from runner.session.database import Connection
from runner.settings import Settings

STATES = ("applied", "pending", "failed", "changed", "missing", "out_of_order")
# Red for what blocks `migrate`, yellow for what it will do or may refuse, green for done.
_COLORS = {"applied": "32", "pending": "33", "failed": "31", "changed": "31",
           "missing": "35", "out_of_order": "33"}


@dataclass(frozen=True)
class Row:
    version: int
    name: str
    file: str | None  # None: applied here, but no file in this folder (missing)
    state: str
    checksum: str  # the file's; the recorded one when there is no file
    applied_checksum: str | None
    applied_at: str | None  # ISO 8601, UTC
    execution_time_ms: int | None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def classify(migrations: list[files.Migration], applied: dict[int, Applied],
             eol_only: set[int] | frozenset[int] = frozenset()) -> list[Row]:
    """One row per version, files and history together, by version. `eol_only`: versions
    whose stored checksum differs by line endings only (applied, not changed)."""
    newest = max(applied, default=None)
    rows: list[Row] = []
    for m in migrations:
        a = applied.get(m.version)
        if a is None:
            older = newest is not None and m.version < newest
            rows.append(Row(m.version, m.name, m.file, "out_of_order" if older else "pending",
                            m.checksum, None, None, None))
            continue
        state = ("failed" if a.status == "failed"
                 else "changed" if a.checksum != m.checksum and m.version not in eol_only
                 else "applied")
        rows.append(Row(m.version, m.name, m.file, state, m.checksum, a.checksum,
                        _iso(a.applied_at), a.execution_time_ms))
    local = {m.version for m in migrations}
    for a in applied.values():
        if a.version not in local:
            # A failed row needs the operator whether or not its file is here.
            state = "failed" if a.status == "failed" else "missing"
            rows.append(Row(a.version, named(a.version, a.description, None), None, state,
                            a.checksum, a.checksum, _iso(a.applied_at), a.execution_time_ms))
    return sorted(rows, key=lambda r: r.version)


def summary(rows: list[Row]) -> dict[str, int]:
    """Every state, zeros included, so `jq .summary.failed` never yields null."""
    return {state: sum(1 for r in rows if r.state == state) for state in STATES}


def document(rows: list[Row]) -> dict[str, Any]:
    return {"migrations": [asdict(r) for r in rows], "summary": summary(rows)}


def use_color(stream: TextIO) -> bool:
    """Colour for a person at a terminal only; NO_COLOR (no-color.org) switches it off."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def table(rows: list[Row], color: bool) -> str:
    header = ("VERSION", "NAME", "STATE", "APPLIED AT", "DURATION")
    cells = [(str(r.version), r.name, r.state,
              r.applied_at[:19].replace("T", " ") + "Z" if r.applied_at else "-",
              f"{r.execution_time_ms} ms" if r.execution_time_ms is not None else "-")
             for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    lines = []
    for i, cell in enumerate([header, *cells]):
        padded = [cell[0].rjust(widths[0])] + [c.ljust(w) for c, w in zip(cell[1:], widths[1:],
                                                                         strict=True)]
        if color and i > 0:  # pad first: escape codes have no width on screen
            padded[2] = f"\x1b[{_COLORS[cell[2]]}m{padded[2]}\x1b[0m"
        lines.append("  ".join(padded).rstrip())
    counts = ", ".join(f"{n} {state}" for state, n in summary(rows).items() if n)
    lines.append("")
    lines.append(counts or "no migrations")
    return "\n".join(lines)


def status(settings: Settings, as_json: bool, exit_code: bool = False) -> int:
    """Exit 0, or with `exit_code`: 5 when `migrate` would refuse to run (a failed row, a
    changed file, out of order, a divergent history, a pending file it cannot run), 6
    when it would apply something,
    0 when it would do nothing. A role that may not read the history: ConfigError (2)."""
    # A person reading the table at a terminal wants the table; JSON logs stay complete.
    chatter = "debug" if settings.log_format == "console" and not as_json else "info"
    rows, comparison, _, refused = read(settings, chatter, refusals=exit_code)
    if as_json:
        print(json.dumps(document(rows), indent=2))
    else:
        print(table(rows, use_color(sys.stdout)))
    getattr(log.get(), chatter)("status_read", **summary(rows))
    return verdict(settings, comparison, refused) if exit_code else 0


def read(settings: Settings, level: str = "info",
         folders: dict[str, files.Folder] | None = None, refusals: bool = False,
         ) -> tuple[list[Row], Comparison, History, list[str]]:
    """The rows of one database (read-only) and the history format settled on it (SPEC
    §8); `folders`: the folder as each format reads it, read once by a caller that reads
    many databases (fleet mode), filled as needed; with `refusals`, what `migrate` would
    refuse in the pending files (`pending_problems`), else []. Raises what connecting
    raises, and a ConfigError for a role that may not read the history."""
    with read_only(settings, "status", level=level) as conn:
        history = settle(settings, conn, level=level)
        folder = folders.get(history.format) if folders is not None else None
        if folder is None:
            folder = history.read_folder(settings.migrations_path)
            for problem in folder.problems:
                # Shown, not fatal: the operator asked what the database looks like.
                log.get().warning("file_problem", problem=problem)
            if folders is not None:
                folders[history.format] = folder
        silence.doing("reading the history")
        try:
            applied = history.read_checked(conn, "status")
        except psycopg.errors.InsufficientPrivilege as exc:
            raise not_allowed(conn, history, exc) from None
        comparison = compare(folder.migrations, applied, history.eol_only)
        refused = pending_problems(conn, history, comparison.pending) if refusals else []
    warn_eol_only(comparison, history)
    rows = classify(folder.migrations, applied, {m.version for m, _ in comparison.eol_only})
    return rows, comparison, history, refused


def pending_problems(conn: Connection, history: History,
                     pending: list[files.Migration]) -> list[str]:
    """What `migrate` would refuse in the pending files before applying any: the
    lexer's problems, then the catalog's (runner.applying.partitioned)."""
    plans, problems = history.lex(pending)
    if problems or not plans:
        return problems
    from runner.applying import partitioned

    silence.doing("checking partitioned tables in the catalog")
    return partitioned.problems(conn, plans, history.spelling)


def verdict(settings: Settings, comparison: Comparison, refused: list[str]) -> int:
    """`--exit-code`: 5 when `migrate` would refuse (`refused`: `pending_problems`), 6
    when it would apply, else 0."""
    if comparison.problems(settings.strict, settings.allow_out_of_order) or refused:
        return VALIDATION
    return PENDING if comparison.pending else 0


def not_allowed(conn: Connection, history: History,
                exc: psycopg.errors.InsufficientPrivilege) -> ConfigError:
    """SQLSTATE 42501 reading the history: the role lacks a grant, which is the deployment's
    configuration (exit 2), not a failed migration (exit 1)."""
    role = conn.info.user
    schema = sql.Identifier(history.schema).as_string(conn)
    table = history.history.as_string(conn)
    who = sql.Identifier(role).as_string(conn)
    return ConfigError(
        f"status: role {role} may not read the history table {table} "
        f"({exc.diag.message_primary or 'permission denied'}, SQLSTATE 42501); grant it, as "
        f"the tables' owner: GRANT USAGE ON SCHEMA {schema} TO {who}; GRANT SELECT ON "
        f"{table} TO {who}", sqlstate="42501", table=table, role=role)
