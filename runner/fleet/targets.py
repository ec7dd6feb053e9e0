"""Fleet mode's targets (SPEC §11): where the list comes from, which of it this process
runs, and how each target is reached.

A target is a database name on the base connection (DATABASE_URL or the PG* variables,
its dbname replaced) or a full URL / key=value string. Its key, `host:port/dbname`,
dedups the list and places it in a shard; its connection string is never shown (every
password in it is registered with `conninfo.scrub` as it is read).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from runner.errors import ConfigError
from runner.output import log
from runner.session import conninfo as cinfo
from runner.settings import Settings, parse_count

SOURCES = (("targets", "MIGRATE_TARGETS"), ("targets_file", "MIGRATE_TARGETS_FILE"),
           ("targets_query", "MIGRATE_TARGETS_QUERY"))
QUERY_TIMEOUT = "30s"


@dataclass(frozen=True)
class Target:
    name: str  # the database name: what events, the table and the termination line show
    key: str  # host:port/dbname: the dedup and shard key
    conninfo: str = field(repr=False)  # never shown

    @property
    def server(self) -> str:
        """host:port, the unit of MIGRATE_SERVER_CONCURRENCY."""
        return self.key.rsplit("/", 1)[0]

    def settings(self, base: Settings) -> Settings:
        """The single-database Settings of this target."""
        return replace(base, database_url=self.conninfo, database_url_file=None)


@dataclass(frozen=True)
class Selection:
    total: int  # after the filters and dedup: the whole fleet
    targets: list[Target]  # this shard's, in key order
    index: int
    count: int


def source(settings: Settings) -> str | None:
    """The one target source set (its variable), None outside fleet mode. Two or three
    sources: ConfigError (exit 2)."""
    found = [env for field, env in SOURCES if getattr(settings, field)]
    if len(found) > 1:
        raise ConfigError(f"{' and '.join(found)} are both set; fleet mode takes exactly one "
                          "target source", variable=found[1])
    return found[0] if found else None


def shard_of(key: str, count: int) -> int:
    """`int.from_bytes(sha256(key)[:8], "big") % count` (SPEC §11): the same in every
    process and every Python (no `hash()`, which PYTHONHASHSEED salts), and adding a
    target never moves another."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


def shard_index(settings: Settings, environ: Mapping[str, str]) -> int:
    """MIGRATE_SHARD_INDEX, else Kubernetes' JOB_COMPLETION_INDEX (an Indexed Job's pod),
    else 0; ConfigError when it is not below MIGRATE_SHARD_COUNT."""
    index, name = settings.shard_index, "MIGRATE_SHARD_INDEX"
    if index is None and environ.get("JOB_COMPLETION_INDEX"):
        name, raw = "JOB_COMPLETION_INDEX", environ["JOB_COMPLETION_INDEX"]
        try:
            index = parse_count(raw)
        except ValueError as exc:
            raise ConfigError(f"JOB_COMPLETION_INDEX={raw!r} is not valid: {exc}",
                              variable=name) from None
    index = index or 0
    if index >= settings.shard_count:
        raise ConfigError(f"{name}={index} is not below MIGRATE_SHARD_COUNT="
                          f"{settings.shard_count}; shards are numbered from 0", variable=name)
    return index


def target(entry: str, base: str, variable: str,
           environ: Mapping[str, str] | None = None) -> Target:
    """One entry of a list: a URL or key=value string taken whole, else a database name
    on the base connection. A ConfigError (exit 2) for one libpq cannot use."""
    environ = os.environ if environ is None else environ
    whole = entry.startswith(("postgresql://", "postgres://")) or "=" in entry
    conninfo = entry if whole else make_conninfo(base, dbname=entry)
    params = cinfo.parse(conninfo, variable, environ)
    host = str(params.get("host") or params.get("hostaddr") or environ.get("PGHOST")
               or "localhost")
    port = str(params.get("port") or environ.get("PGPORT") or "5432")
    dbname = str(params.get("dbname") or environ.get("PGDATABASE") or params.get("user")
                 or environ.get("PGUSER") or "")
    return Target(dbname, f"{host}:{port}/{dbname}", conninfo)


def _entries(settings: Settings, variable: str) -> list[str]:
    if variable == "MIGRATE_TARGETS":
        return [e.strip() for e in (settings.targets or "").split(",") if e.strip()]
    if variable == "MIGRATE_TARGETS_FILE":
        path = Path(settings.targets_file or "")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"MIGRATE_TARGETS_FILE {str(path)!r} cannot be read: "
                              f"{exc.__class__.__name__}", variable=variable) from None
        lines = (line.strip() for line in text.splitlines())
        return [line for line in lines if line and not line.startswith("#")]
    return _query(settings)


def _query(settings: Settings) -> list[str]:
    """MIGRATE_TARGETS_QUERY on the base connection: read-only, 30 s at most. Unreachable:
    UnreachableError (exit 3); a query the server refuses: ConfigError (exit 2)."""
    from runner.commands import read_only

    with read_only(settings, "targets", level="debug") as conn:
        conn.execute(f"SET statement_timeout = '{QUERY_TIMEOUT}'")
        try:
            rows = conn.execute(settings.targets_query or "").fetchall()
        except psycopg.Error as exc:
            raise ConfigError(
                f"MIGRATE_TARGETS_QUERY failed: {(exc.diag.message_primary or str(exc)).strip()}"
                f" (SQLSTATE {exc.sqlstate}); its first column must list the targets",
                variable="MIGRATE_TARGETS_QUERY", sqlstate=exc.sqlstate) from None
    return [str(row[0]).strip() for row in rows if row and row[0] is not None]


def _full_match(pattern: str | None, name: str) -> bool:
    return pattern is not None and re.fullmatch(pattern, name) is not None


def select(settings: Settings, environ: Mapping[str, str] | None = None) -> Selection:
    """This process's targets: listed, filtered on the database name, deduplicated by key
    (`target_duplicate`), this shard's in key order. ConfigError (exit 2) for an empty
    list (unless MIGRATE_ALLOW_NO_TARGETS) and a shard index out of range."""
    environ = os.environ if environ is None else environ
    variable = source(settings)
    if variable is None:
        raise ConfigError("fleet mode needs a target source: MIGRATE_TARGETS, "
                          "MIGRATE_TARGETS_FILE or MIGRATE_TARGETS_QUERY")
    index = shard_index(settings, environ)
    base = settings.conninfo()
    found: dict[str, Target] = {}
    for entry in _entries(settings, variable):
        t = target(entry, base, variable, environ)
        if settings.targets_include is not None and not _full_match(settings.targets_include,
                                                                    t.name):
            continue
        if _full_match(settings.targets_exclude, t.name):
            continue
        if t.key in found:
            log.get().warning("target_duplicate", target=t.name, key=t.key,
                              message="listed more than once; run once")
            continue
        found[t.key] = t
    if not found and not settings.allow_no_targets:
        raise ConfigError(f"{variable} lists no target (after MIGRATE_TARGETS_INCLUDE / "
                          "_EXCLUDE); set MIGRATE_ALLOW_NO_TARGETS=true if that is expected",
                          variable=variable)
    mine = sorted((t for t in found.values()
                   if shard_of(t.key, settings.shard_count) == index), key=lambda t: t.key)
    return Selection(len(found), mine, index, settings.shard_count)
