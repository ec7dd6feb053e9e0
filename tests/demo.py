"""`make demo`: the PACS migrations applied to a throwaway PostgreSQL, then `status`.

The runner keeps the history the app's `sqlx::migrate!` keeps (`MIGRATE_HISTORY_FORMAT=sqlx`),
as the PACS deployment does everywhere (docs/deploying.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.pg import Cluster

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"MIGRATE_HISTORY_FORMAT": "sqlx", "MIGRATE_LOG_FORMAT": "console"}


def main() -> int:
    cluster = Cluster()
    try:
        cluster.start()
        env = {**os.environ, "DATABASE_URL": cluster.url(),
               "MIGRATIONS_DIR": str(ROOT / "migrations"), **SETTINGS}
        runner = [sys.executable, "-m", "runner"]
        shown = " ".join(f"{k}={v}" for k, v in SETTINGS.items() if k != "MIGRATE_LOG_FORMAT")
        print(f"== migration-runner migrate  (throwaway PostgreSQL on port {cluster.port}, "
              f"{shown})", flush=True)
        code = subprocess.call([*runner, "migrate"], env=env)
        print("\n== migration-runner status", flush=True)
        subprocess.call([*runner, "status"], env=env)
        print(f"\nmigration-runner is installed in .venv, not on PATH: "
              f"{os.path.relpath(Path(sys.executable).parent / 'migration-runner')} --help "
              "(or `. .venv/bin/activate`, or `pip install .` into an environment of your own).",
              flush=True)
        return code
    finally:
        cluster.destroy()


if __name__ == "__main__":
    raise SystemExit(main())
