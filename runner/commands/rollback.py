"""`rollback --steps N | --to V`: run rollback files, newest first (SPEC §4).

Under the same advisory lock as `migrate`, so a rollback never races a rollout. Every
rollback file needed is read and lexed before the first one runs: a rollback that stops
at a missing file half-way leaves the database between two versions no image matches.
Each file runs in its own transaction with its history row deleted and an audit row
`down`; a no-transaction rollback file runs like a no-transaction migration.
"""

from __future__ import annotations

import time

from runner.applying import partitioned
from runner.applying.apply import Applier
from runner.commands import (
    history_for,
    locked,
    read_only,
    refuse_running_elsewhere,
    settle,
    settled_files,
)
from runner.commands.migrate import print_plan
from runner.errors import ValidationError
from runner.folder import files, statements
from runner.histories.history import Applied, History, named
from runner.output import log
from runner.session import silence
from runner.settings import Settings


def targets(applied: dict[int, Applied], steps: int | None, to: int | None) -> list[Applied]:
    """The history rows to roll back, newest first."""
    newest_first = sorted(applied.values(), key=lambda a: a.version, reverse=True)
    if to is not None:
        if to != 0 and to not in applied:
            # Probably a typo; guessing could roll back far more than meant.
            raise ValidationError([f"version {to} is not applied; --to takes an applied "
                                   "version (it stays applied), or 0 to roll back everything"])
        return [a for a in newest_first if a.version > to]
    return newest_first[: steps if steps is not None else 1]


def check(history: History, chosen: list[Applied], applied: dict[int, Applied],
          migrations: list[files.Migration]) -> list[statements.Plan]:
    """The rollback plans, in order; a ValidationError naming every reason not to start."""
    by_version = {m.version: m for m in migrations}
    problems = [f"{named(a.version, a.description, by_version.get(a.version))}: failed "
                "part-way (no-transaction migration); fix the database by hand and run "
                f"`{history.cli('repair --failed')}` or "
                f"`{history.cli(f'repair --mark-applied {a.version}')}` first"
                for a in applied.values() if a.status == "failed"]
    needed: list[files.Migration] = []
    for a in chosen:
        m = by_version.get(a.version)
        if m is None:
            problems.append(f"{named(a.version, a.description, None)}: applied, but neither "
                            "its file nor its "
                            "rollback file is in this folder; use the image that applied it")
        elif m.checksum != a.checksum and not history.eol_only(m, a.checksum):
            problems.append(f"{m.file}: changed after it was applied, so its rollback may "
                            "not match what ran; restore the file, or run "
                            f"`{history.cli('repair --accept-checksums')}` if the edit is "
                            "intended")
        else:
            needed.append(m)
    plans, found = history.lex_rollbacks(needed)
    problems += found
    if problems:
        raise ValidationError(problems)
    return plans


def rollback(settings: Settings, steps: int | None = None, to: int | None = None,
             dry_run: bool = False) -> int:
    logger = log.get()
    started = time.monotonic()
    folder_history = history_for(settings)
    migrations = folder_history.load(settings.migrations_path)
    if dry_run:  # the same checks, on a read-only connection without the lock
        with read_only(settings, "dry-run") as conn:
            history = settle(settings, conn)
            migrations = settled_files(history, folder_history, migrations, settings)
            silence.doing("reading the history")
            applied = history.read_checked(conn, "rollback")
            plans = check(history, targets(applied, steps, to), applied, migrations)
            silence.doing("checking partitioned tables in the catalog")
            partitioned.refuse(conn, plans, history.spelling)
        print_plan(plans, empty="nothing to roll back")
        return 0
    with locked(settings) as session:
        history = session.history
        migrations = settled_files(history, folder_history, migrations, settings)
        conn = session.work
        silence.doing("reading the history")
        applied = history.read_checked(conn, "rollback")
        refuse_running_elsewhere(session, applied)
        chosen = targets(applied, steps, to)
        plans = check(history, chosen, applied, migrations)
        silence.doing("checking partitioned tables in the catalog")
        partitioned.refuse(conn, plans, history.spelling)
        session.check_same_session()
        if plans:  # the app may have made the history without the audit table
            silence.doing("creating the bookkeeping tables")
            history.ensure(conn)
        with session.watching() as watch:
            applier = Applier(conn, history, settings, session.lock, watch)
            for plan in plans:
                applier.revert(plan)
        undone = {p.migration.version for p in plans}
        remaining = max((v for v in applied if v not in undone), default=None)
        logger.info("rollback_complete", rolled_back=len(plans), now_at=remaining,
                    duration_ms=round((time.monotonic() - started) * 1000))
    return 0
