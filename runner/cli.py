"""Command line (SPEC §1), signals, exit codes and the termination message (SPEC §5)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import psycopg

from runner import __version__, log
from runner.commands import migrate as migrate_cmd
from runner.errors import CONFIG, ConfigError, Interrupted, RunnerError
from runner.settings import SPECS, Settings, add_flags, resolve, termination_log_path

Handler = Callable[[Settings, argparse.Namespace], int]
TERMINATION_LIMIT = 4096


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def _version(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a version number, got {value!r}") from None


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    return migrate_cmd.migrate(settings, to=args.to, dry_run=args.dry_run)


def _validate(settings: Settings, args: argparse.Namespace) -> int:
    return migrate_cmd.validate_offline(settings)


def build_parser() -> Parser:
    parser = Parser(prog="migration-runner",
                    description="Apply PostgreSQL migration files once, in order, under an "
                                "advisory lock. No command means `migrate`.")
    parser.add_argument("--version", action="version", version=f"migration-runner {__version__}")
    add_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, handler: Handler, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext)
        add_flags(p)
        p.set_defaults(handler=handler)
        return p

    p = command("migrate", _migrate, "apply pending migrations (the default)")
    p.add_argument("--to", type=_version, metavar="V", help="stop after version V")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan on stdout and change nothing")
    p = command("validate", _validate, "check the migration files")
    p.add_argument("--offline", action="store_true", help="no database: file checks only")
    return parser


def _value_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = {s.flag for s in SPECS if s.flag}
    flags |= {"--to", "--steps"}
    return {f for f in flags if f not in ("--strict", "--allow-out-of-order")}


def with_default_command(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`migration-runner --dry-run` means `migration-runner migrate --dry-run`."""
    value_flags = _value_flags(parser)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help", "--version"):
            return argv
        if not arg.startswith("-"):
            return argv
        i += 2 if arg in value_flags else 1
    return ["migrate", *argv]


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
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _fail(code: int, message: str, /, **fields: Any) -> int:
    log.get().error("run_failed", exit_code=code, error=message, **fields)
    write_termination(message)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    log.configure("console" if sys.stderr.isatty() else "json")
    _install_signal_handlers()
    try:
        parser = build_parser()
        args = parser.parse_args(with_default_command(argv, parser))
        settings = resolve(vars(args))
        log.configure(settings.log_format, settings.log_level)
        handler: Handler = args.handler
        return handler(settings, args)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        log.get().error("interrupted", signal=name, exit_code=exc.exit_code)
        write_termination(f"interrupted by {name}")
        return exc.exit_code
    except RunnerError as exc:
        return _fail(exc.exit_code, exc.message, **exc.fields)
    except psycopg.Error as exc:
        # The connection dropped or a bookkeeping query failed outside a migration.
        message = str(exc).strip() or exc.__class__.__name__
        return _fail(1, f"database error: {message}", sqlstate=exc.sqlstate)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else CONFIG
    except Exception as exc:  # a bug: still a clear exit and termination message
        log.get().exception("run_failed", exit_code=1, error=repr(exc))
        write_termination(f"internal error: {exc!r}")
        return 1
