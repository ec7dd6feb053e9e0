"""What a fleet run reports (SPEC §11): the exit code its targets add up to, the table or
JSON document on stdout, MIGRATE_SUMMARY_FILE, the termination line, `fleet_complete`,
the metrics per target and one webhook message per shard."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from runner.errors import LOCK_TIMEOUT, OK, TARGETS_FAILED, UNREACHABLE
from runner.fleet.run import OK as DONE
from runner.fleet.run import Outcome
from runner.fleet.targets import Selection
from runner.histories.history import client_host, plural
from runner.output import log, metrics, notify
from runner.settings import Settings

STATUSES = ("failed", "interrupted", "not_started", "applied", "done", "ahead",
            "up_to_date")
PUBLISHED = False  # the run's metrics and webhook went out here, not per process
_SHOWN_FAILURES = 20  # in the termination line and the webhook; the summary has them all


def exit_code(outcomes: list[Outcome]) -> int:
    """SPEC §11: 0 when none failed; 7 when one failed for a reason a retry will not fix;
    else 4 when every failure was the lock, 3 when one was unreachable."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return OK
    if any(not o.transient for o in failed):
        return TARGETS_FAILED
    return LOCK_TIMEOUT if all(o.exit_code == LOCK_TIMEOUT for o in failed) else UNREACHABLE


def ordered(outcomes: list[Outcome]) -> list[Outcome]:
    """Failures first, then by status, then in key order."""
    return sorted(outcomes, key=lambda o: (STATUSES.index(o.status), o.target.key))


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    found = Counter(o.status for o in outcomes)
    return {status: found[status] for status in STATUSES}


def document(selection: Selection, outcomes: list[Outcome], code: int,
             duration_ms: int) -> dict[str, Any]:
    return {
        "shard": {"index": selection.index, "count": selection.count},
        "targets": [{"target": o.target.name, "key": o.target.key, "status": o.status,
                     "exit_code": o.exit_code, "version_before": o.version_before,
                     "version_after": o.version_after, "applied": o.applied,
                     "pending": o.pending, "duration_ms": o.duration_ms, "error": o.error}
                    for o in ordered(outcomes)],
        "summary": {**counts(outcomes), "duration_ms": duration_ms, "exit_code": code},
    }


def _where(o: Outcome) -> str:
    """`003_add_mask_tables.up.sql:22 42P07`, or what there is of it."""
    error = o.error or {}
    if error.get("file"):
        place = f"{error['file']}:{error['line']}" if error.get("line") else error["file"]
        return f"{place} {error.get('sqlstate') or ''}".strip()
    return " ".join(p for p in (error.get("sqlstate"), f"exit {o.exit_code}") if p)


def termination(selection: Selection, outcomes: list[Outcome], code: int) -> str:
    """`7: 3 of 250 targets failed (shard 2/8): site_017 003_add_mask_tables.up.sql:22
    42P07; ...`"""
    failed = [o for o in ordered(outcomes) if o.status == "failed"]
    named = "; ".join(f"{o.target.name} {_where(o)}" for o in failed[:_SHOWN_FAILURES])
    more = f"; and {len(failed) - _SHOWN_FAILURES} more" if len(failed) > _SHOWN_FAILURES else ""
    return (f"{code}: {len(failed)} of {plural(len(outcomes), 'target')} failed "
            f"(shard {selection.index}/{selection.count}): {named}{more}")


def table(outcomes: list[Outcome]) -> str:
    header = ("TARGET", "STATUS", "EXIT", "VERSION", "APPLIED", "DURATION", "ERROR")
    cells = []
    for o in ordered(outcomes):
        before = "-" if o.version_before is None else str(o.version_before)
        version = (f"{before}->{o.version_after}" if o.version_after is not None
                   and o.version_after != o.version_before else before)
        error = o.error["message"] if o.error else ""
        cells.append((o.target.name, o.status, "-" if o.exit_code is None else str(o.exit_code),
                      version, str(o.applied), f"{o.duration_ms} ms", error))
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *cells]]
    lines += ["", ", ".join(f"{n} {status}" for status, n in counts(outcomes).items() if n)
              or "no targets"]
    return "\n".join(lines)


def write_summary(path: str, doc: dict[str, Any]) -> None:
    """Temp file in the same folder, then rename: a reader never sees half a document."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".summary-", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.get().warning("summary_write_failed", path=path, error=str(exc))
        with contextlib.suppress(OSError, UnboundLocalError):
            Path(tmp).unlink()


def slowest(outcomes: list[Outcome], n: int = 5) -> list[dict[str, Any]]:
    ran = sorted((o for o in outcomes if o.tries), key=lambda o: -o.duration_ms)[:n]
    return [{"target": o.target.name, "duration_ms": o.duration_ms} for o in ran]


def publish(settings: Settings, selection: Selection, outcomes: list[Outcome],
            code: int, as_json: bool, duration_ms: int, interrupted: bool = False) -> str:
    """Everything the run reports, in order; the termination line ("" when none)."""
    global PUBLISHED
    PUBLISHED = True
    doc = document(selection, outcomes, code, duration_ms)
    log.get().info("fleet_complete", **counts(outcomes), duration_ms=duration_ms,
                   exit_code=code, slowest=slowest(outcomes))
    print(json.dumps(doc, indent=2) if as_json else table(outcomes))
    if settings.summary_file:
        write_summary(settings.summary_file, doc)
    metrics.publish(settings.pushgateway_url, settings.pushgateway_job, settings.metrics_file,
                    code, client_host(),
                    targets=[(o.recorder, o.exit_code if o.exit_code is not None else -1)
                             for o in outcomes if o.tries],
                    statuses=counts(outcomes))
    if code == OK and not interrupted:
        return ""
    line = termination(selection, outcomes, code)
    if settings.webhook_url:
        failed = [o for o in ordered(outcomes) if o.status not in DONE]
        body = {"text": f"migration-runner fleet on {client_host()}: {line}",
                "exit_code": code, "shard": doc["shard"], "summary": doc["summary"],
                "failures": [{"target": o.target.name, "status": o.status,
                              "exit_code": o.exit_code, "error": o.error}
                             for o in failed[:_SHOWN_FAILURES]],
                "host": client_host()}
        notify.send(settings.webhook_url, body, settings.webhook_timeout)
    return line
