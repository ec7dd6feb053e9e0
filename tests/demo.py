"""`make demo`: the PACS migrations applied to a throwaway PostgreSQL, then `status`.

No MIGRATE_HISTORY_FORMAT: `auto`, the default, gives the PACS folder (sqlx's `.up.sql` /
`.down.sql` layout) the history the app's `sqlx::migrate!` keeps, and says so in its
`history_format` line (docs/deploying.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.pg import Cluster

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"MIGRATE_LOG_FORMAT": "console"}


def main() -> int:
    cluster = Cluster()
    try:
        cluster.start()
        env = {**os.environ, "DATABASE_URL": cluster.url(),
               "MIGRATIONS_DIR": str(ROOT / "migrations"), **SETTINGS}
        runner = [sys.executable, "-m", "runner"]
        print(f"== migration-runner migrate  (throwaway PostgreSQL on port {cluster.port}, "
              "MIGRATE_HISTORY_FORMAT unset: auto)", flush=True)
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
