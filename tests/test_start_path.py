"""What a start with nothing to do pays for (issue 21): every pod start but the first runs
it, so it imports only what it uses. The times are bench/run.py's; here, which modules."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from runner.output import log
from tests.conftest import ROOT, Db, run, runner_env

Files = Callable[[dict[str, str | bytes]], Path]
# Imported where used: a failed first connection, the console format, a file to lex,
# metrics to publish, the live line.
NOT_ON_THE_NO_OP_PATH = {"tenacity", "structlog", "pglast", "prometheus_client", "tqdm"}
MODULES_AFTER = ("import sys\nfrom runner.cli import main\ncode = main()\n"
                 "print(' '.join(sorted(sys.modules)))\nsys.exit(code)\n")


@pytest.mark.parametrize("command", ["migrate", "status"])
def test_start_with_nothing_to_do_imports_only_what_it_uses(
        db: Db, migrations: Files, command: str) -> None:
    folder = migrations({"001_a.sql": "CREATE TABLE a (id int);",
                         "002_b.sql": "CREATE TABLE b (id int);"})
    assert run(db.url, folder).code == 0
    proc = subprocess.run([sys.executable, "-c", MODULES_AFTER, command],
                          env=runner_env(db.url, folder), capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    modules = set(proc.stdout.split())
    assert f"runner.commands.{command}" in modules  # the command did run
    assert {m.split(".")[0] for m in modules} & NOT_ON_THE_NO_OP_PATH == set()


def test_json_lines_are_those_structlog_rendered(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON log no longer goes through structlog: the same event, fields, order and
    fallbacks as its processors give (bar the timestamp's value)."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(log, "_json", log._json)  # configure() below replaces it
    fields: dict[str, Any] = {"version": 3, "path": Path("/m/003_c.sql"), "level": "x",
                              "names": ["a", "b"], "note": "naïve"}

    def watcher(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "watched": True}

    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = exc
    log.configure("json", "info", watchers=[watcher])
    log.get().warning("something_happened", **fields, exc_info=error)
    log.get().debug("below_the_level")
    ours = capsys.readouterr().err.splitlines()

    stream = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    lambda _l, _m, e: {**e, "run_id": log.RUN_ID}, watcher,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream), cache_logger_on_first_use=False)
    try:
        structlog.get_logger().warning("something_happened", **fields, exc_info=error)
        structlog.get_logger().debug("below_the_level")
    finally:
        structlog.reset_defaults()
    theirs = stream.getvalue().splitlines()

    assert len(ours) == len(theirs) == 1
    mine, reference = json.loads(ours[0]), json.loads(theirs[0])
    assert mine["timestamp"].endswith("Z") and reference["timestamp"].endswith("Z")
    mine["timestamp"] = reference["timestamp"]
    assert list(mine.items()) == list(reference.items())
    assert "ValueError: boom" in mine["exception"]
