"""`repair --failed | --accept-checksums | --mark-applied V`: clear what blocks `migrate`,
after a person has looked (SPEC §4).

--failed deletes `failed` rows: the operator fixed the database by hand, and the file
runs again on the next `migrate`. --mark-applied V turns version V's `failed` row into an
applied one with the file's checksum: the operator finished a no-transaction migration
by hand, and running the file again would repeat its completed statements (Flyway's and
golang-migrate's `force V`). --accept-checksums stores the files' current checksums for
applied files that changed (a reviewed comment or whitespace edit). Every change gets an
audit row `repair`; all of them commit together, under the lock.
"""

from __future__ import annotations

from runner.commands import history_for, locked, refuse_running_elsewhere
from runner.errors import ConfigError, ValidationError
from runner.histories.history import as_fields, named
from runner.output import log
from runner.session import silence
from runner.settings import Settings


def repair(settings: Settings, failed: bool, accept_checksums: bool,
           mark_applied: int | None = None) -> int:
    if not (failed or accept_checksums or mark_applied is not None):
        raise ConfigError("repair: say what to repair: --failed, --accept-checksums or "
                          "--mark-applied V (see --help)")
    logger = log.get()
    folder_history = history_for(settings)
    folder = folder_history.read_folder(settings.migrations_path)
    # Checksums must come from a folder that passes the file checks; --failed must work
    # even in one that does not (the files only name the rows in the log).
    if (accept_checksums or mark_applied is not None) and folder.problems:
        raise ValidationError(folder.problems)
    with locked(settings) as session:
        history = session.history
        if history.format != folder_history.format:
            folder = history.read_folder(settings.migrations_path)
            if (accept_checksums or mark_applied is not None) and folder.problems:
                raise ValidationError(folder.problems)
        by_version = {m.version: m for m in folder.migrations}
        conn = session.work
        silence.doing("reading the history")
        applied = history.read_checked(conn, "repair")
        refuse_running_elsewhere(session, applied)
        mark = None
        if mark_applied is not None:
            mark = by_version.get(mark_applied)
            row = applied.get(mark_applied)
            if row is None or row.status != "failed" or mark is None:
                state = ("not in the history" if row is None
                         else "applied, not failed" if row.status != "failed"
                         else "failed, but its file is not in this folder")
                raise ValidationError([
                    f"repair --mark-applied {mark_applied} refused: version {mark_applied} is "
                    f"{state}; only a `failed` row whose file is here can be marked applied. "
                    "Nothing was changed"])
        clear = [a for a in applied.values() if failed and a.status == "failed"
                 and a.version != mark_applied]
        accept = [(by_version[v], a) for v, a in applied.items()
                  if accept_checksums and v in by_version and a.status == "applied"
                  and a.checksum != by_version[v].checksum]
        session.check_same_session()
        if clear or accept or mark:  # the app may have made the history without the audit table
            silence.doing("creating the bookkeeping tables")
            history.ensure(conn)
        silence.doing("writing the history")
        with conn.transaction():
            session.fence(conn)
            if mark is not None and history.mark_applied(conn, mark):
                history.audit_row(conn, mark, "repair", 0, True)
            for a in clear:
                history.delete(conn, a.version)
                history.audit_row(conn, a, "repair", 0, True)
            for m, _ in accept:
                history.set_checksum(conn, m.version, m.checksum)
                history.audit_row(conn, m, "repair", 0, True)
        if mark is not None:
            logger.info("failed_row_marked_applied", **as_fields(mark), checksum=mark.checksum)
        for a in clear:
            local = by_version.get(a.version)
            logger.info("failed_row_cleared", version=a.version,
                        name=local.name if local else named(a.version, a.description, None),
                        file=local.file if local else None, checksum=a.checksum)
        for m, a in accept:
            logger.info("checksum_accepted", **as_fields(m), old_checksum=a.checksum,
                        new_checksum=m.checksum)
        logger.info("repair_complete", failed_cleared=len(clear),
                    checksums_accepted=len(accept), marked_applied=int(mark is not None))
    return 0
