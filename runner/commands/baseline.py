"""`baseline --to V`: adopt a database built before the runner (SPEC §4).

The old psql init containers left the PACS schema without any history. Baseline records
every local migration up to V as applied, without running it, so `migrate` applies only
what is newer. Refused on a database with any history: there it would hide real state.
"""

from __future__ import annotations

from runner.commands import history_for, locked, settled_files
from runner.errors import ValidationError
from runner.histories.history import as_fields, plural
from runner.output import log
from runner.session import silence
from runner.settings import Settings


def baseline(settings: Settings, to: int) -> int:
    logger = log.get()
    folder_history = history_for(settings)
    migrations = folder_history.load(settings.migrations_path)
    if to not in {m.version for m in migrations}:
        # An exact version only: a typo such as 30 for 3 would adopt files never run.
        raise ValidationError([f"baseline refused: no migration file has version {to}; "
                               "give the version of the last file the database already has"])
    with locked(settings) as session:
        history = session.history
        migrations = settled_files(history, folder_history, migrations, settings)
        chosen = [m for m in migrations if m.version <= to]
        conn = session.work
        silence.doing("reading the history")
        applied = history.read_checked(conn, "baseline")
        silence.doing("creating the bookkeeping tables")
        history.ensure(conn)
        if applied:
            raise ValidationError([
                f"baseline refused: {history.table} already has {plural(len(applied), 'row')} "
                f"(newest version {max(applied)}); baseline is only for a database the "
                "runner has never migrated. Use `status` to see its state"])
        session.check_same_session()
        silence.doing("writing the history")
        with conn.transaction():
            session.fence(conn)
            for m in chosen:
                history.record_applied(conn, m, 0)
                history.audit_row(conn, m, "baseline", 0, True)
            retired = history.retire_other(conn)
        if retired:
            logger.warning("history_retired", renamed_to=retired,
                           message="the other format's history, renamed so that no later "
                                   "run reads it; kept as the record of what ran before")
        for m in chosen:
            logger.info("migration_baselined", **as_fields(m))
        logger.info("baseline_complete", recorded=len(chosen), to=to,
                    pending=len(migrations) - len(chosen))
    return 0
