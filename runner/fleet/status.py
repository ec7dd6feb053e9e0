"""`status` over the fleet (SPEC §11): each target's version and verdict, read-only, as
the gate after a rollout. Each target is read by `runner.commands.status`, so what one
database's `status` reports is what its row here says."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
import structlog

from runner.commands import history_for
from runner.commands import status as single
from runner.errors import OK, PENDING, TARGETS_FAILED, FleetError, RunnerError
from runner.fleet import targets
from runner.fleet.targets import Target
from runner.folder import files
from runner.histories.history import plural
from runner.output import log
from runner.settings import Settings

# Worst first: the order of the table and of the verdict.
STATES = ("unreachable", "failed", "behind", "ahead", "current")


@dataclass
class Row:
    target: str
    key: str
    state: str
    version: int | None = None  # newest applied
    pending: int | None = None
    failed: int | None = None  # failed, changed or out-of-order migrations
    error: str | None = None


def read_target(settings: Settings, folders: dict[str, files.Folder], target: Target,
                shard: int) -> Row:
    structlog.contextvars.bind_contextvars(target=target.name, shard=shard)
    row = Row(target.name, target.key, "unreachable")
    try:
        rows, comparison, _, refused = single.read(target.settings(settings), "debug",
                                                   folders, refusals=True)
    except RunnerError as exc:
        row.error = exc.message
    except psycopg.Error as exc:
        row.error = f"database error: {str(exc).strip()}"
    else:
        applied = [r.version for r in rows if r.applied_at is not None]
        row.version = max(applied, default=None)
        row.pending = len(comparison.pending)
        row.failed = sum(1 for r in rows if r.state in ("failed", "changed", "out_of_order"))
        code = single.verdict(settings, comparison, refused)
        row.state = ("failed" if code not in (OK, PENDING) else "behind" if code == PENDING
                     else "ahead" if comparison.missing else "current")
    log.get().info("target_status", state=row.state, version=row.version,
                   pending=row.pending, **({"error": row.error} if row.error else {}))
    return row


def table(rows: list[Row]) -> str:
    header = ("TARGET", "STATE", "VERSION", "PENDING", "ERROR")
    cells = [(r.target, r.state, "-" if r.version is None else str(r.version),
              "-" if r.pending is None else str(r.pending), r.error or "") for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *cells]]
    lines += ["", ", ".join(f"{n} {s}" for s, n in counts(rows).items() if n) or "no targets"]
    return "\n".join(lines)


def counts(rows: list[Row]) -> dict[str, int]:
    return {state: sum(1 for r in rows if r.state == state) for state in STATES}


def status(settings: Settings, as_json: bool, exit_code: bool = False) -> int:
    """Exit 0, or with `exit_code` (SPEC §11): 7 (FleetError naming them) when some target
    could not be read or holds what `migrate` refuses, 6 when some are behind, else 0."""
    started = time.monotonic()
    history = history_for(settings)
    folder = history.read_folder(settings.migrations_path)
    for problem in folder.problems:
        log.get().warning("file_problem", problem=problem)
    # Each target's format is settled on it (SPEC §8); the folder is read once per format.
    folders = {history.format: folder}
    selection = targets.select(settings)
    structlog.contextvars.bind_contextvars(shard=selection.index)
    with ThreadPoolExecutor(settings.concurrency, thread_name_prefix="status") as pool:
        rows = list(pool.map(lambda t: read_target(settings, folders, t, selection.index),
                             selection.targets))
    rows.sort(key=lambda r: (STATES.index(r.state), r.key))
    document: dict[str, Any] = {
        "shard": {"index": selection.index, "count": selection.count},
        "targets": [asdict(r) for r in rows],
        "summary": {**counts(rows), "duration_ms": round((time.monotonic() - started) * 1000)}}
    print(json.dumps(document, indent=2) if as_json else table(rows))
    log.get().info("fleet_status", **document["summary"])
    if not exit_code:
        return OK
    bad = [r for r in rows if r.state in ("unreachable", "failed")]
    if bad:
        named = "; ".join(f"{r.target} {r.state}" for r in bad[:20])
        raise FleetError(f"{TARGETS_FAILED}: {plural(len(bad), 'target')} of {len(rows)} "
                         f"unreadable or refused (shard {selection.index}/{selection.count})"
                         f": {named}", TARGETS_FAILED)
    return PENDING if any(r.state == "behind" for r in rows) else OK
