"""The work session put back between files, and the lock's fence (SPEC §3, §10.1).

Session state. All files run on one work connection, so whatever a file leaves in its
session (a `SET` or `set_config(..., false)` of any setting, `SET ROLE`, `SET SESSION
AUTHORIZATION`, temporary tables, prepared statements, WITH HOLD cursors, LISTEN,
session advisory locks, sequence state) would reach the next file and our own
bookkeeping. So right after a file's statements the session is put back to the state the
first file started from, with what `DISCARD ALL` does, one statement each: `DISCARD ALL`
itself refuses to run in a transaction block or after another statement of a pipeline
(PostgreSQL's `PreventInTransactionBlock`), so it would cost a round trip of its own.
Before the history and audit rows: `SET SESSION AUTHORIZATION DEFAULT` (the role too),
`RESET ALL` (back to the startup parameters, `application_name` among them), then one
SELECT that sets again whatever was SET on the session before the first file (read once
from `pg_settings` where `source = 'session'`; the runner's own settings are startup
parameters, which `RESET ALL` returns to: runner.session.environment), calls
`pg_advisory_unlock_all()`, checks the lock's fence (below), and says whether the file
left cursors, prepared statements or temporary tables. After
the rows: `DISCARD SEQUENCES` and `UNLISTEN *` (a LISTEN of this transaction does not
show until it commits). When the SELECT said so, `CLOSE ALL`, `DEALLOCATE ALL` and
`DISCARD TEMP` open the next migration's transaction, before its statements: three
statements that nearly no file needs are not paid by every migration. All of it goes out
in the migrations' own pipelines, so a transactional migration is still one round trip,
and commits with it (a `SET` made in a transaction outlives its COMMIT). When the
migration fails, its rollback undoes its settings, and the failed attempt's audit row,
in a transaction of its own, resets first for what a rollback does not undo (prepared
statements, session advisory locks). So the bookkeeping rows are always written by the
connecting role with the session's first settings (`synchronous_commit` included), and
the next file starts where the first one did. psycopg's automatic prepared statements
are off on the work connection: `DEALLOCATE ALL` would drop them behind its back.

The fence (SPEC §10.1). Nothing commits unless the runner holds the advisory lock at
that moment: the reset's SELECT, in the migration's transaction before its history row
and COMMIT, checks that the lock connection's backend holds the lock and fails the
transaction when it does not (runner.session.lock, `AdvisoryLock.fence`). It
rides in the SELECT the migration sends anyway, so a migration is still one round trip.
On a single connection (a connection limit of one), where `pg_advisory_unlock_all()`
would drop the lock itself, the same place takes it again, and fails if it cannot. The
no-transaction marker, rollbacks, baseline and repair are fenced the same way; the
forward history row is inserted, never upserted, so a second applier fails on its key.
"""

from __future__ import annotations

from psycopg import sql

from runner.session.database import Connection

# DISCARD ALL, one statement each (see the docstring above). Before the bookkeeping
# rows: the role and the settings (then, in one SELECT, the runner's own settings set
# again, the advisory locks released, and whether anything else was left behind); after
# them: sequence state. What else a file may leave, only when it did, before the next.
_RESET_FIRST = ("SET SESSION AUTHORIZATION DEFAULT", "RESET ALL")
# UNLISTEN * always: a LISTEN shows in pg_listening_channels() only once committed.
RESET_AFTER = ("DISCARD SEQUENCES", "UNLISTEN *")
LEFTOVERS = ("CLOSE ALL", "DEALLOCATE ALL", "DISCARD TEMP")
# The session's temporary schema stays assigned once it made a temporary object, so after
# the first one the leftovers are cleared before every migration: cheaper for the files
# that never make one than a scan of pg_class after each (hundreds of microseconds in a
# catalog of a few thousand relations).
_LEFT_BEHIND = """(
  EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE name <> '')  -- '': a protocol portal
  OR EXISTS (SELECT FROM pg_catalog.pg_prepared_statements)
  OR pg_catalog.pg_my_temp_schema() <> 0)"""
_SESSION_SET = """
SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' ORDER BY name
"""


def session_reset(conn: Connection, *after_unlock: str) -> list[list[str]]:
    """For each SQL expression of `after_unlock`, the statements that put the role and
    settings back to their state now, the last one a SELECT that evaluates the expression
    right after pg_advisory_unlock_all() (the lock's fence or its relock, SPEC §10.1) and
    whose last column says whether cursors, prepared statements or temporary tables are
    left too (see the module's docstring)."""
    rows = conn.execute(_SESSION_SET).fetchall()
    calls = [sql.SQL("pg_catalog.set_config({}, {}, false)").format(name, value)
             for name, value in rows]
    resets = []
    for expression in after_unlock:
        again = sql.SQL("SELECT ") + sql.SQL(", ").join(
            [*calls, sql.SQL("pg_catalog.pg_advisory_unlock_all()"), sql.SQL(expression),
             sql.SQL(_LEFT_BEHIND)])
        resets.append([*_RESET_FIRST, again.as_string(conn)])
    return resets
