"""`make demo`: the PACS migrations applied to a throwaway PostgreSQL, then `status`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.pg import Cluster

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    cluster = Cluster()
    try:
        cluster.start()
        env = {**os.environ, "DATABASE_URL": cluster.url(),
               "MIGRATIONS_DIR": str(ROOT / "migrations"), "MIGRATE_LOG_FORMAT": "console"}
        runner = [sys.executable, "-m", "runner"]
        print(f"== migration-runner migrate  (throwaway PostgreSQL on port {cluster.port})",
              flush=True)
        code = subprocess.call([*runner, "migrate"], env=env)
        print("\n== migration-runner status", flush=True)
        subprocess.call([*runner, "status"], env=env)
        return code
    finally:
        cluster.destroy()


if __name__ == "__main__":
    raise SystemExit(main())
