"""Command line (SPEC §1), signals, exit codes and the termination message (SPEC §5)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import psycopg

from runner import __version__
from runner.errors import CONFIG, UNREACHABLE, ConfigError, Interrupted, RunnerError
from runner.histories.history import client_host
from runner.output import log, metrics, notify
from runner.session import conninfo, deadline, silence
from runner.settings import SPECS, Settings, add_flags, resolve, termination_log_path

Handler = Callable[[Settings, argparse.Namespace], int]
TERMINATION_LIMIT = 4096
# SIGTERM ends the process within 10 s in every state (SPEC §10.2). The cleanup (cancel,
# rollback, audit row, unlock) takes milliseconds on a live network: a connection still
# waiting SEVER_AFTER_S seconds after the signal waits on a stalled one and is severed;
# a cleanup still running at HARD_EXIT_S is cut short.
SEVER_AFTER_S = 3.0
HARD_EXIT_S = 9.0
_TIMERS: list[threading.Timer] = []  # cancelled as main() returns (it may run in-process)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def _version(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a version number, got {value!r}") from None


def _steps(value: str) -> int:
    try:
        steps = int(value)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {value!r}")
    return steps


def _fleet(settings: Settings) -> bool:
    """A target source is set (SPEC §11); which one, and only one, fleet mode checks."""
    return bool(settings.targets or settings.targets_file or settings.targets_query)


# Each handler imports its command's module: a pod start loads only `migrate`'s.
def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from runner.commands import migrate as migrate_cmd

    if _fleet(settings):
        from runner.fleet import commands as fleet_cmd

        if args.dry_run:
            return fleet_cmd.each(settings, "migrate --dry-run", lambda one: migrate_cmd.migrate(
                one, to=args.to, dry_run=True), query=True)
        return fleet_cmd.migrate(settings, to=args.to, as_json=args.json)

    return migrate_cmd.migrate(settings, to=args.to, dry_run=args.dry_run)


def _validate(settings: Settings, args: argparse.Namespace) -> int:
    from runner.commands import validate as validate_cmd

    if _fleet(settings) and not args.offline:
        from runner.fleet.commands import each

        return each(settings, "validate", lambda one: validate_cmd.validate(one, offline=False),
                    query=True)

    return validate_cmd.validate(settings, offline=args.offline)


def _status(settings: Settings, args: argparse.Namespace) -> int:
    if _fleet(settings):
        from runner.fleet import status as fleet_status

        return fleet_status.status(settings, as_json=args.json, exit_code=args.exit_code)
    from runner.commands import status as status_cmd

    return status_cmd.status(settings, as_json=args.json, exit_code=args.exit_code)


def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    from runner.commands import rollback as rollback_cmd

    def run(one: Settings) -> int:
        return rollback_cmd.rollback(one, steps=args.steps, to=args.to, dry_run=args.dry_run)

    if _fleet(settings):
        from runner.fleet.commands import each

        return each(settings, "rollback", run)
    return run(settings)


def _baseline(settings: Settings, args: argparse.Namespace) -> int:
    from runner.commands import baseline as baseline_cmd

    if _fleet(settings):
        from runner.fleet.commands import each

        return each(settings, "baseline", lambda one: baseline_cmd.baseline(one, to=args.to))
    return baseline_cmd.baseline(settings, to=args.to)


def _repair(settings: Settings, args: argparse.Namespace) -> int:
    from runner.commands import repair as repair_cmd

    def run(one: Settings) -> int:
        return repair_cmd.repair(one, failed=args.failed,
                                 accept_checksums=args.accept_checksums,
                                 mark_applied=args.mark_applied)

    if _fleet(settings):
        from runner.fleet.commands import each

        return each(settings, "repair", run)
    return run(settings)


def _new(settings: Settings, args: argparse.Namespace) -> int:
    from runner.commands import new as new_cmd

    return new_cmd.new(settings, args.description, number=args.number,
                       no_transaction=args.no_transaction)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from runner.commands import verify as verify_cmd

    if args.schema_name:
        log.get().warning("option_renamed", option="--schema-name", use="--report-schema",
                          message="verify --schema-name is now --report-schema (--schema is "
                                  "the bookkeeping schema); the old name goes in the next "
                                  "release")
    return verify_cmd.verify(settings, (args.report_schema or []) + (args.schema_name or []),
                             write=args.write, expect=args.expect)


def _draft_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from runner.commands import draft_rollback as draft_cmd

    return draft_cmd.draft_rollback(settings, args.version, to_stdout=args.stdout)


def build_parser(only: str | None = None) -> Parser:
    """Every command's parser. `only`: the command this run parses; the shared settings'
    flags and the usage line are made for it and the top parser alone, never read on the
    others (~2 ms of every start). None: for every command."""
    parser = Parser(prog="migration-runner",
                    description="Apply PostgreSQL migration files once, in order, under an "
                                "advisory lock. No command means `migrate`.")
    parser.add_argument("--version", action="version", version=f"migration-runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands: list[argparse.ArgumentParser] = []

    def command(name: str, handler: Handler, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        commands.append(p)
        return p

    p = command("migrate", _migrate, "apply pending migrations (the default)")
    p.add_argument("--to", type=_version, metavar="V", help="stop after version V")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan on stdout and change nothing")
    p.add_argument("--json", action="store_true",
                   help="fleet mode: the summary as one JSON document on stdout")
    p = command("validate", _validate, "check every file, forward and rollback, and (unless "
                "--offline) the history; report every problem, exit 5 on any")
    p.add_argument("--offline", action="store_true", help="no database: file checks only")
    p = command("status", _status, "show every migration and its state (read-only: no lock, "
                "creates nothing)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--exit-code", action="store_true",
                   help="exit 6 when migrations are pending, 5 when migrate would refuse "
                   "(failed, changed, out of order, divergent), 0 when there is nothing to do")
    p = command("rollback", _rollback, "run rollback files, newest first, under the lock")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--steps", type=_steps, metavar="N",
                       help="roll back the N newest applied migrations (default 1)")
    which.add_argument("--to", type=_version, metavar="V",
                       help="roll back every applied version greater than V; V stays "
                       "applied (--to 0 rolls back all but a version 0, which only "
                       "--steps can roll back)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the rollback files it would run on stdout and change nothing")
    p = command("baseline", _baseline, "record every migration up to V as applied without "
                "running it (adopt a database built before the runner)")
    p.add_argument("--to", type=_version, metavar="V", required=True,
                   help="the version the database already has")
    p = command("repair", _repair, "clear failed rows, mark one finished by hand as applied, "
                "or accept changed checksums; each change audited")
    p.add_argument("--failed", action="store_true",
                   help="delete `failed` history rows (after fixing the database by hand)")
    p.add_argument("--accept-checksums", action="store_true",
                   help="store the current checksums of applied files that changed")
    p.add_argument("--mark-applied", type=_version, metavar="V",
                   help="record failed version V as applied with its file's checksum (after "
                   "finishing it by hand); refused unless V is `failed`")
    p = command("new", _new, "write the next migration and its rollback file, in the "
                "folder's layout (NNN_x.up.sql / .down.sql, or NNN_x.sql / _rollback.sql)")
    p.add_argument("description", metavar="DESCRIPTION",
                   help="letters, digits, _ and -, e.g. add_study_notes")
    p.add_argument("--number", type=_version, metavar="V",
                   help="use version V instead of the next one")
    p.add_argument("--no-transaction", action="store_true",
                   help="a file that runs outside a transaction (CREATE INDEX CONCURRENTLY): "
                   "the folder's directive as its first line")
    p = command("verify", _verify, "report the schema as JSON, or compare it with a snapshot "
                "(exit 5 on drift)")
    p.add_argument("--report-schema", action="append", metavar="NAME",
                   help="a schema to report (repeatable; default: every non-system schema, "
                   "or the snapshot's with --expect); not --schema, the bookkeeping schema")
    p.add_argument("--schema-name", action="append", help=argparse.SUPPRESS)  # until 0.3
    p.add_argument("--write", metavar="FILE", help="write the report to FILE (a snapshot)")
    p.add_argument("--expect", metavar="FILE",
                   help="compare with the snapshot in FILE; print the drift and exit 5")
    p = command("draft-rollback", _draft_rollback, "write the first draft of a migration's "
                "rollback file from its forward file (never overwrites)")
    p.add_argument("version", type=_version, metavar="VERSION", help="the migration to undo")
    p.add_argument("--stdout", action="store_true", help="print the draft instead of writing it")
    for p in [parser, *commands]:
        if only is not None and p is not parser and p.prog.rsplit(" ", 1)[-1] != only:
            continue
        # The command's own options first in usage and help, then the shared settings.
        p.usage = (p.format_usage().removeprefix("usage: ").strip() + " [SETTINGS]"
                   if p is not parser else
                   "migration-runner [-h] [--version] [SETTINGS] [COMMAND] [OPTIONS]")
        add_flags(p)
    return parser


def _value_flags() -> set[str]:
    flags = {s.flag for s in SPECS if s.flag}
    flags |= {"--to", "--steps", "--number", "--schema-name", "--report-schema", "--write",
              "--expect", "--mark-applied"}
    return {f for f in flags if f not in ("--strict", "--allow-out-of-order",
                                         "--allow-no-targets")}


def command_word(argv: list[str]) -> str | None:
    """The command: the first argument that is neither a flag nor a flag's value; "" when
    -h, --help or --version comes first; None when there is none."""
    value_flags = _value_flags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help", "--version"):
            return ""
        if not arg.startswith("-"):
            return arg
        i += 2 if arg in value_flags else 1
    return None


def with_default_command(argv: list[str]) -> list[str]:
    """`migration-runner --dry-run` means `migration-runner migrate --dry-run`."""
    return ["migrate", *argv] if command_word(argv) is None else argv


def write_termination(message: str) -> None:
    """One line for `kubectl describe pod`; the default path only where the kubelet made it."""
    path, explicit = termination_log_path()
    if not explicit and not os.path.exists(path):
        return
    line = " ".join(message.split())
    data = line.encode()[:TERMINATION_LIMIT - 1].decode(errors="ignore") + "\n"
    try:
        with open(path, "w") as f:
            f.write(data)
    except OSError:
        pass


def _install_signal_handlers() -> None:
    fired = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal fired
        if fired:  # one interruption; let its cleanup run undisturbed
            return
        fired = True
        _bound_cleanup(signum)
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _bound_cleanup(signum: int) -> None:
    """Timers that bound what the interruption's cleanup may wait for."""
    for delay, action in ((SEVER_AFTER_S, deadline.sever_all),
                          (HARD_EXIT_S, lambda: _hard_exit(signum))):
        timer = threading.Timer(delay, action)
        timer.daemon = True
        timer.start()
        _TIMERS.append(timer)


def _hard_exit(signum: int) -> None:
    code = Interrupted(signum).exit_code
    name = signal.Signals(signum).name
    message = f"interrupted by {name}; cleanup cut short after {HARD_EXIT_S:g}s"
    log.get().error("interrupted", signal=name, exit_code=code, error=message)
    write_termination(message)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        for timer in _TIMERS:
            timer.cancel()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    log.configure("console" if sys.stderr.isatty() else "json")
    _install_signal_handlers()
    settings: Settings | None = None
    command: str | None = None
    fields: dict[str, Any] = {}
    final: tuple[str, dict[str, Any]] | None = None  # the closing error event, if any
    try:
        argv = with_default_command(argv)
        args = build_parser(command_word(argv) or None).parse_args(argv)
        command = args.command
        settings = resolve(vars(args))
        log.configure(settings.log_format, settings.log_level,
                      watchers=[conninfo.scrub_event, metrics.RECORDER])
        handler: Handler = args.handler
        code, message = handler(settings, args), ""
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        code, message = exc.exit_code, f"interrupted by {name}"
        final = ("interrupted", {"signal": name})
    except RunnerError as exc:
        code, message, fields = exc.exit_code, exc.message, exc.fields
        final = ("run_failed", fields)
    except psycopg.Error as exc:
        # The connection dropped or a bookkeeping query failed outside a migration.
        text = " ".join(str(exc).split()) or exc.__class__.__name__
        fields = {"sqlstate": exc.sqlstate}
        if isinstance(exc, psycopg.OperationalError) and (
                exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P"))):
            code = UNREACHABLE  # SPEC §10.2: a lost connection, a retry can help
            fields, message = _lost(fields, text)
            final = ("connection_lost", fields)
        else:
            code = 1
            message = f"database error: {str(exc).strip() or exc.__class__.__name__}"
            final = ("run_failed", fields)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else CONFIG
    except Exception as exc:  # a bug: still a clear exit and termination message
        code, message = 1, f"internal error: {exc!r}"
        # Rendered here rather than by the log, so it is scrubbed like every other field.
        final = ("run_failed", {"exception": "".join(traceback.format_exception(exc))})
    # Whatever a library put in the message, the termination file and the webhook get
    # it without the connection string's secrets, as the log does.
    message, fields = conninfo.scrub(message), conninfo.scrub_all(fields)
    _report(settings, command, code, message, fields)
    if final is not None:  # last, so the log's final line says why the run failed
        event, extra = final
        log.get().error(event, exit_code=code, error=message, **extra)
        write_termination(message)
    return code


def _lost(fields: dict[str, Any], text: str) -> tuple[dict[str, Any], str]:
    """A connection lost outside a migration (SPEC §10.2): what the run was doing, and
    why the runner cut it when it stopped answering (runner.session.silence)."""
    stage = silence.stage() or "outside a migration"
    if silence.verdicts:  # severed by the runner: what libpq then saw is our own doing
        fields = {**fields, "stalled": silence.verdicts[-1]}
        text = f"stalled: {silence.verdicts[-1]}"
    return {**fields, "stage": stage}, (
        f"connection to the database lost while {stage}: {text}; nothing is left half-done "
        "(the server commits a transaction whole or not at all; `status` shows the "
        "history): a retry can help")


def run() -> NoReturn:
    """The console script and `python -m runner`: main(), then exit without the
    interpreter's teardown. Freeing every module at exit takes 40-90 ms, a sixth of a
    run with nothing to do, and every pod start pays it. Nothing is left to clean up by
    then: the connections are closed, the termination message and metrics written, and
    the two streams are flushed here."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away (`| head`)
            stream.flush()
    os._exit(code)


def _report(settings: Settings | None, command: str | None, code: int, message: str,
            fields: dict[str, Any]) -> None:
    """Metrics of a migrate run, and the failure webhook of any command; neither can change
    the exit code."""
    fleet = sys.modules.get("runner.fleet.report")
    if fleet is not None and fleet.PUBLISHED:  # per target and once per shard, by the fleet
        return
    host = client_host()
    if settings is not None and command == "migrate":
        metrics.publish(settings.pushgateway_url, settings.pushgateway_job,
                        settings.metrics_file, code, host)
    if code == 0:
        return
    # Settings that failed to parse still get their webhook, with the default timeout.
    url = settings.webhook_url if settings else os.environ.get("MIGRATE_WEBHOOK_URL")
    if url:
        timeout = settings.webhook_timeout if settings else 5.0
        body = notify.failure_body(code, message, fields, host, metrics.RECORDER.database)
        notify.send(url, body, timeout)
