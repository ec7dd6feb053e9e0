"""Errors the runner expects, each with its documented exit code (SPEC §5).

Anything else is a bug: it still exits non-zero, but with a traceback.
"""

from __future__ import annotations

from typing import Any

OK = 0
MIGRATION_FAILED = 1
CONFIG = 2
UNREACHABLE = 3
LOCK_TIMEOUT = 4
VALIDATION = 5
PENDING = 6  # `status --exit-code` only: migrations to apply, none refused
TARGETS_FAILED = 7  # fleet mode only: a target failed for a reason a retry will not fix
SIGINT_EXIT = 130
SIGTERM_EXIT = 143


class RunnerError(Exception):
    """An expected failure: a message for the operator, an exit code, fields for the log."""

    exit_code = MIGRATION_FAILED

    def __init__(self, message: str, /, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class ConfigError(RunnerError):
    exit_code = CONFIG


class UnreachableError(RunnerError):
    exit_code = UNREACHABLE


class ConnectionLostError(UnreachableError):
    """The connection died or stalled mid-run (SPEC §10.2): exit 3, a retry can help."""


class LockTimeoutError(RunnerError):
    exit_code = LOCK_TIMEOUT


class LockLostError(RunnerError):
    """The advisory lock's session ended mid-run (SPEC §10.1): whatever was running was
    rolled back, and a retry can help."""

    exit_code = LOCK_TIMEOUT


class RunningElsewhereError(RunnerError):
    """A no-transaction migration's `failed` row whose owner is still running it (SPEC
    §10.1): wait and retry; repairing it now would start it twice."""

    exit_code = LOCK_TIMEOUT


class MigrationError(RunnerError):
    exit_code = MIGRATION_FAILED


class FleetError(RunnerError):
    """Fleet mode's verdict (SPEC §11): the code its failed targets add up to, and the
    termination line naming them."""

    def __init__(self, message: str, exit_code: int, /, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.exit_code = exit_code


class ValidationError(RunnerError):
    """One or more problems with the files or the history; all of them are reported."""

    exit_code = VALIDATION

    def __init__(self, problems: list[str], head: str = "", **fields: Any) -> None:
        """`head`: what the problems are, e.g. "schema drift from FILE" (default: their
        count, or the problem itself when there is one)."""
        self.problems = problems
        if not head and len(problems) > 1:
            head = f"{len(problems)} problems"
        message = f"{head}: " + "; ".join(problems) if head else problems[0]
        super().__init__(message, problems=problems, **fields)


class Interrupted(KeyboardInterrupt):
    """Raised from the signal handler. A KeyboardInterrupt, so psycopg cancels the running
    statement on the server before it propagates."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        import signal

        return SIGTERM_EXIT if self.signum == signal.SIGTERM else SIGINT_EXIT
