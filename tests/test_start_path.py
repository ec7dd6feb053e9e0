"""What a start with nothing to do pays for (issue 21): every pod start but the first runs
it, so it imports only what it uses. The times are bench/run.py's; here, which modules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Db, run, runner_env

Files = Callable[[dict[str, str | bytes]], Path]
# Imported where used: a failed first connection, a file to lex, metrics to publish, the
# live line, a file to apply. (structlog renders every log line, SPEC §6: on every path.)
NOT_ON_THE_NO_OP_PATH = {"tenacity", "pglast", "prometheus_client", "tqdm",
                         "runner.applying"}
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
    imported = {m.split(".")[0] for m in modules} | {m.rsplit(".", 1)[0] for m in modules}
    assert imported & NOT_ON_THE_NO_OP_PATH == set()
