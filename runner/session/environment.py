"""What the role, the database and the server bring with them (SPEC §3, §10.3).

The runner's sessions set, explicitly, every setting whose inherited value would change
what a migration does or how long it may take, and the ones that keep a dead peer from
holding the lock: as libpq startup parameters (`options`, `-c name=value`, and
`client_encoding`), not SETs. So they cost no round trip, hold from the first statement,
and are what `RESET ALL` returns to (the session reset between migrations runs it); a
role's or database's `ALTER ... SET` comes before them and loses. Inside a migration the
runner's own MIGRATE_STATEMENT_TIMEOUT and MIGRATE_DDL_LOCK_TIMEOUT apply (`SET LOCAL`).

Right after the first connection, one query tells whether the server is a standby or
the session read-only (`look`), and which role or database settings differ from what the
runner uses: one `session_settings` event names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from runner.settings import Settings

Connection = psycopg.Connection[tuple[Any, ...]]

# Set on every session whatever the role or database says. The idle timeouts would end
# the lock connection, idle while migrations run, and the lock with it (SPEC §10.1);
# statement_timeout and lock_timeout are the migrations' own (set inside each one);
# keepalives and the check of a vanished client bound a dead peer (SPEC §3).
OWN = {
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "idle_session_timeout": "0",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "client_connection_check_interval": "2s",
}
SINCE_14 = ("idle_session_timeout", "client_connection_check_interval")
# The files are UTF-8: the server converts to the database's encoding, and a character
# it cannot hold is a located 22P05; on SQL_ASCII the bytes pass as psql passes them.
CLIENT_ENCODING = "UTF8"


def startup(user_options: str, before_14: bool = False) -> dict[str, str]:
    """libpq parameters: `options` (the user's own `options` or PGOPTIONS first, ours
    after, so ours win) and `client_encoding`. `before_14`: without the settings
    PostgreSQL 13 does not know (it refuses the connection over an unknown one)."""
    ours = " ".join(f"-c {name}={value}" for name, value in OWN.items()
                    if not (before_14 and name in SINCE_14))
    return {"options": f"{user_options} {ours}".strip(), "client_encoding": CLIENT_ENCODING}


def refused_as_too_new(exc: psycopg.Error) -> bool:
    """A server before 14 refusing a startup setting it does not know (42704)."""
    return "unrecognized configuration parameter" in str(exc) and any(
        name in str(exc) for name in SINCE_14)


def refused_options(exc: psycopg.Error) -> bool:
    """A proxy that refuses the `options` startup parameter (PgBouncer without
    `ignore_startup_parameters = options`: 08P01 "unsupported startup parameter")."""
    return "unsupported startup parameter" in str(exc) and "options" in str(exc)


def sets(server_version: int) -> str:
    """Where `options` cannot be sent: the same settings as SETs, one round trip after
    connecting (the session reset then sets them again after its RESET ALL)."""
    return "; ".join(f"SET {name} = '{value}'" for name, value in OWN.items()
                     if server_version >= 140000 or name not in SINCE_14)


class Standby(Exception):
    """The server is a standby, or the session read-only: nothing may be written."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True)
class Look:
    read_only: str | None  # why nothing can be written here, or None
    differing: list[dict[str, str]]  # role/database settings the runner overrides


_LOOK = """
SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only'),
  pg_catalog.current_setting('server_encoding'),
  (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(name, value, source))
   FROM (SELECT DISTINCT ON (name) name, value, source FROM (
     SELECT pg_catalog.split_part(c, '=', 1) AS name,
       pg_catalog.substr(c, pg_catalog.strpos(c, '=') + 1) AS value,
       CASE WHEN s.setrole <> 0 AND s.setdatabase <> 0 THEN 'role in database'
            WHEN s.setrole <> 0 THEN 'role' WHEN s.setdatabase <> 0 THEN 'database'
            ELSE 'all roles' END AS source,
       (s.setrole = 0)::int * 2 + (s.setdatabase = 0)::int AS rank
     FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c
     WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database
                                 WHERE datname = pg_catalog.current_database()))
       AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles
                             WHERE rolname = session_user))) settings
   WHERE name = ANY (%s) ORDER BY name, rank) chosen)
"""


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms" if seconds > 0 else "0"


def used(settings: Settings) -> dict[str, str]:
    """What the runner's migrations run with, by setting name."""
    return {**OWN, "statement_timeout": _duration(settings.statement_timeout),
            "lock_timeout": _duration(settings.ddl_lock_timeout),
            "client_encoding": CLIENT_ENCODING}


def look(conn: Connection, settings: Settings) -> Look:
    """One round trip right after connecting: standby or read-only, and the role's and
    database's settings (pg_db_role_setting, ALTER ROLE / DATABASE ... SET, the most
    specific one winning as at login) that differ from what the runner uses."""
    ours = used(settings)
    row = conn.execute(_LOOK, (list(ours),)).fetchone()
    assert row is not None
    recovery, read_only, server_encoding, found = row
    inherited: dict[str, tuple[str, str]] = {
        name: (value, source) for name, value, source in found or []}
    inherited.setdefault("client_encoding", (server_encoding, "the database's encoding"))
    differing = [{"name": name, "inherited": value, "source": source, "used": ours[name]}
                 for name, (value, source) in sorted(inherited.items())
                 if not _same(value, ours[name])]
    why = ("a standby in recovery (pg_is_in_recovery() is true)" if recovery else
           "a read-only session (default_transaction_read_only is on for this role, "
           "database or server)" if read_only == "on" else None)
    return Look(why, differing)


def _same(inherited: str, used: str) -> bool:
    zero = {"0", "0ms", "0s", "0min"}
    return inherited.strip().upper() == used.upper() or (inherited.strip() in zero
                                                         and used in zero)


def user_options(params: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The libpq `options` the user gave: in the connection string, else PGOPTIONS."""
    return str(params.get("options") or environ.get("PGOPTIONS") or "")
