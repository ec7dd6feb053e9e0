"""Settings (SPEC §1): every one an environment variable and, mostly, a flag; the flag wins."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ConfigError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true/false/1/0/yes/no/on/off")


def parse_duration(text: str) -> float:
    """`30`, `1.5`, `500ms`, `30s`, `5m` -> seconds."""
    value = text.strip().lower()
    factor = 1.0
    for unit in ("ms", "s", "m"):
        if value.endswith(unit):
            value, factor = value[: -len(unit)], _UNITS[unit]
            break
    try:
        seconds = float(value) * factor
    except ValueError:
        raise ValueError("expected seconds like 30, 1.5, 500ms, 30s or 5m") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError("expected a finite duration of zero or more")
    return seconds


def parse_count(text: str) -> int:
    try:
        count = int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if count < 0:
        raise ValueError("expected zero or more")
    return count


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def parse_positive(text: str) -> int:
    count = parse_count(text)
    if count < 1:
        raise ValueError("expected a whole number of 1 or more")
    return count


def parse_regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return text


def parse_schema(text: str) -> str:
    if not text or "\x00" in text or len(text.encode()) > 63:
        raise ValueError("expected a schema name of 1 to 63 bytes")
    return text


@dataclass(frozen=True)
class Spec:
    field: str
    env: str
    flag: str | None
    parse: Callable[[str], Any]
    default: Any
    help: str


SPECS = [
    Spec("database_url", "DATABASE_URL", "--database-url", str, None,
         "postgresql:// URI or libpq key=value string (default: the PG* variables, as psql)"),
    Spec("database_url_file", "DATABASE_URL_FILE", "--database-url-file", str, None,
         "read the database URL from this file (a mounted Secret)"),
    Spec("database_password_file", "DATABASE_PASSWORD_FILE", "--database-password-file", str,
         None, "read the password from this file at every connection attempt (a token "
         "refreshed while the runner waits is used)"),
    Spec("migrations_dir", "MIGRATIONS_DIR", "--dir", str, "migrations",
         "folder of migration files"),
    Spec("run_migrations", "RUN_MIGRATIONS", None, parse_bool, True, ""),
    Spec("schema", "MIGRATE_SCHEMA", "--schema", parse_schema, "public",
         "schema of the bookkeeping tables, created if missing"),
    Spec("wait_timeout", "MIGRATE_WAIT_TIMEOUT", "--wait-timeout", parse_duration, 60.0,
         "total time to wait for the database (0: one attempt)"),
    Spec("connect_timeout", "MIGRATE_CONNECT_TIMEOUT", "--connect-timeout", parse_duration, 5.0,
         "one connection attempt"),
    Spec("lock_timeout", "MIGRATE_LOCK_TIMEOUT", "--lock-timeout", parse_duration, 300.0,
         "how long to wait for the advisory lock (0: one try)"),
    Spec("ddl_lock_timeout", "MIGRATE_DDL_LOCK_TIMEOUT", "--ddl-lock-timeout", parse_duration, 5.0,
         "PostgreSQL lock_timeout inside each transactional migration (0: off)"),
    Spec("ddl_lock_retries", "MIGRATE_DDL_LOCK_RETRIES", "--ddl-lock-retries", parse_count, 5,
         "retries of a migration that failed on lock_not_available or deadlock"),
    Spec("statement_timeout", "MIGRATE_STATEMENT_TIMEOUT", "--statement-timeout", parse_duration,
         0.0, "PostgreSQL statement_timeout inside each migration (0: off)"),
    Spec("allow_out_of_order", "MIGRATE_ALLOW_OUT_OF_ORDER", "--allow-out-of-order", parse_bool,
         False, "apply pending files older than the newest applied one"),
    Spec("strict", "MIGRATE_STRICT", "--strict", parse_bool, False,
         'treat "database is ahead of these files" as an error'),
    Spec("history_format", "MIGRATE_HISTORY_FORMAT", "--history-format",
         parse_choice("auto", "native", "sqlx"), "auto",
         "auto (the database's history, else the folder's layout), native "
         "(migration_history) or sqlx (_sqlx_migrations, shared with the app's "
         "sqlx::migrate!)"),
    Spec("log_format", "MIGRATE_LOG_FORMAT", "--log-format", parse_choice("json", "console"), None,
         "json or console (default: console on a TTY, else json)"),
    Spec("log_level", "MIGRATE_LOG_LEVEL", "--log-level",
         parse_choice("debug", "info", "warning", "error"), "info", "debug, info, warning, error"),
    Spec("pushgateway_url", "MIGRATE_PUSHGATEWAY_URL", "--pushgateway-url", str, None,
         "push metrics to this Prometheus Pushgateway at exit"),
    Spec("pushgateway_job", "MIGRATE_PUSHGATEWAY_JOB", "--pushgateway-job", str,
         "migration-runner", "the Pushgateway job label"),
    Spec("metrics_file", "MIGRATE_METRICS_FILE", "--metrics-file", str, None,
         "write metrics here at exit (node-exporter textfile collector)"),
    Spec("webhook_url", "MIGRATE_WEBHOOK_URL", "--webhook-url", str, None,
         "POST a Slack-compatible JSON message here on failure"),
    Spec("webhook_timeout", "MIGRATE_WEBHOOK_TIMEOUT", "--webhook-timeout", parse_duration, 5.0,
         "how long the failure webhook may take"),
    Spec("progress_interval", "MIGRATE_PROGRESS_INTERVAL", "--progress-interval", parse_duration,
         10.0, "how often a running migration logs migration_progress (0: never)"),
    # Fleet mode (SPEC §11): on when exactly one target source is set.
    Spec("targets", "MIGRATE_TARGETS", "--targets", str, None,
         "fleet mode: comma-separated databases (names on the base connection, or URLs)"),
    Spec("targets_file", "MIGRATE_TARGETS_FILE", "--targets-file", str, None,
         "fleet mode: a file of targets, one per line (# comments)"),
    Spec("targets_query", "MIGRATE_TARGETS_QUERY", "--targets-query", str, None,
         "fleet mode: SQL run read-only on the base connection; its first column lists "
         "the targets"),
    Spec("targets_include", "MIGRATE_TARGETS_INCLUDE", "--targets-include", parse_regex, None,
         "fleet mode: only targets whose database name fully matches this regex"),
    Spec("targets_exclude", "MIGRATE_TARGETS_EXCLUDE", "--targets-exclude", parse_regex, None,
         "fleet mode: leave out targets whose database name fully matches this regex"),
    Spec("allow_no_targets", "MIGRATE_ALLOW_NO_TARGETS", "--allow-no-targets", parse_bool,
         False, "fleet mode: an empty target list is not an error"),
    Spec("shard_index", "MIGRATE_SHARD_INDEX", "--shard-index", parse_count, None,
         "fleet mode: this process's shard (default JOB_COMPLETION_INDEX, else 0)"),
    Spec("shard_count", "MIGRATE_SHARD_COUNT", "--shard-count", parse_positive, 1,
         "fleet mode: number of shards the targets are split into"),
    Spec("concurrency", "MIGRATE_CONCURRENCY", "--concurrency", parse_positive, 4,
         "fleet mode: targets in flight at once (each uses up to 2 connections)"),
    Spec("server_concurrency", "MIGRATE_SERVER_CONCURRENCY", "--server-concurrency",
         parse_positive, None, "fleet mode: targets in flight at once per host:port"),
    Spec("on_error", "MIGRATE_ON_ERROR", "--on-error", parse_choice("stop", "continue"), "stop",
         "fleet mode: after a failed target, start no new one (stop) or go on (continue)"),
    Spec("target_retries", "MIGRATE_TARGET_RETRIES", "--target-retries", parse_count, 1,
         "fleet mode: tries again, at the end, of a target that failed transiently"),
    Spec("summary_file", "MIGRATE_SUMMARY_FILE", "--summary-file", str, None,
         "fleet mode: write the JSON summary here (atomically)"),
]
_BOOL_FLAGS = {"allow_out_of_order", "strict", "allow_no_targets"}


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    database_url_file: str | None
    migrations_dir: str
    run_migrations: bool
    schema: str
    wait_timeout: float
    connect_timeout: float
    lock_timeout: float
    ddl_lock_timeout: float
    ddl_lock_retries: int
    statement_timeout: float
    allow_out_of_order: bool
    strict: bool
    history_format: str
    log_format: str
    log_level: str
    pushgateway_url: str | None
    pushgateway_job: str
    metrics_file: str | None
    webhook_url: str | None
    webhook_timeout: float
    progress_interval: float
    # MIGRATE_SCHEMA given (SPEC §8): else the sqlx history is wherever the session's
    # search_path finds it, as the app's unqualified `_sqlx_migrations` is.
    schema_explicit: bool = False
    database_password_file: str | None = None
    targets: str | None = None
    targets_file: str | None = None
    targets_query: str | None = None
    targets_include: str | None = None
    targets_exclude: str | None = None
    allow_no_targets: bool = False
    shard_index: int | None = None
    shard_count: int = 1
    concurrency: int = 4
    server_concurrency: int | None = None
    on_error: str = "stop"
    target_retries: int = 1
    summary_file: str | None = None

    @property
    def migrations_path(self) -> Path:
        return Path(self.migrations_dir)

    def conninfo(self) -> str:
        """The connection string: the URL, the URL file's content, or "" (libpq's PG* vars)."""
        if self.database_url_file:
            try:
                return Path(self.database_url_file).read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"DATABASE_URL_FILE {self.database_url_file!r} cannot be read: "
                    f"{exc.__class__.__name__}; mount the Secret there or unset the variable"
                ) from None
        return self.database_url or ""


def _shown_default(spec: Spec) -> str:
    """The default as one would type it; none where the help says what happens instead."""
    value = spec.default
    if value is None:
        return ""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}s"
    else:
        text = str(value)
    return f", default {text}"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Setting flags, added to the top parser and every command, so they work on either side."""
    group = parser.add_argument_group("settings (each also an environment variable)")
    for spec in SPECS:
        if spec.flag is None:
            continue
        helptext = f"{spec.help} [{spec.env}{_shown_default(spec)}]"
        if spec.field in _BOOL_FLAGS:
            # No optional value: `--strict status` must not read `status` as one.
            group.add_argument(spec.flag, dest=spec.field, action="store_const", const="true",
                               default=argparse.SUPPRESS, help=helptext)
            group.add_argument("--no-" + spec.flag[2:], dest=spec.field, action="store_const",
                               const="false", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            group.add_argument(spec.flag, dest=spec.field, default=argparse.SUPPRESS,
                               metavar=spec.env, help=helptext)


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags over environment over defaults; any bad value is a ConfigError naming it."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw, source = flags.get(spec.field), spec.flag
        if raw is None:
            raw, source = environ.get(spec.env) or None, spec.env
        if raw is None:
            values[spec.field] = spec.default
            continue
        try:
            values[spec.field] = spec.parse(raw)
        except ValueError as exc:
            label = spec.env if source == spec.env else f"{spec.flag} ({spec.env})"
            raise ConfigError(f"{label}={raw!r} is not valid: {exc}", variable=spec.env) from None
    if values["database_url"] and values["database_url_file"]:
        raise ConfigError("DATABASE_URL and DATABASE_URL_FILE are both set; keep only one",
                          variable="DATABASE_URL_FILE")
    values["schema_explicit"] = bool(flags.get("schema") or environ.get("MIGRATE_SCHEMA"))
    if values["log_format"] is None:
        values["log_format"] = "console" if sys.stderr.isatty() else "json"
    return Settings(**values)


def termination_log_path(environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(path, explicit): read apart from the other settings, so a bad setting still gets
    its termination message."""
    environ = os.environ if environ is None else environ
    path = environ.get("MIGRATE_TERMINATION_LOG")
    return (path, True) if path else (DEFAULT_TERMINATION_LOG, False)
