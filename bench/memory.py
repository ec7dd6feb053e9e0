"""Peak RSS against file size: one file of multi-row INSERTs (reference data) applied by
`migration-runner migrate` and by psql, on a throwaway PostgreSQL (SPEC §10.4).

    .venv/bin/python bench/run.py --memory [--sizes 1,10,50]

Each size gets a generated file (1,000 rows per INSERT, as `pg_dump --rows-per-insert`
writes them) and a fresh database per run; the peak RSS is the process's own `ru_maxrss`
(`os.wait4`). The target: under 64 MiB + 3 x the file, and a 50 MB file under the shipped
256 MiB limit. Exits 1 when a run failed or missed the target.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.pg import Cluster  # noqa: E402  (the tests' throwaway-server helper)

MIB = 1024 * 1024
ROWS = 1000
LIMIT_MIB = 256  # the shipped Job's and initContainer's memory limit


def generate(path: Path, size: int) -> int:
    """About `size` bytes of multi-row INSERTs into `code`; the number of rows."""
    rows = 0
    with path.open("w") as f:
        f.write("CREATE TABLE code (id int PRIMARY KEY, scheme text, value text, "
                "meaning text);\n")
        while f.tell() < size:
            values = ",\n".join(f"({rows + i}, 'DCM', '{rows + i:06d}', 'Meaning of code "
                                f"{rows + i} in the terminology')" for i in range(1, ROWS + 1))
            f.write(f"INSERT INTO code (id, scheme, value, meaning) VALUES\n{values};\n")
            rows += ROWS
    return rows


def peak(cmd: Sequence[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    """Exit code and peak RSS (MiB) of one process."""
    with log.open("ab") as err:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def run(sizes: list[int]) -> int:
    work = Path(tempfile.mkdtemp(prefix="mr-bench-memory-"))
    cluster = Cluster()
    failures: list[str] = []
    rows_out: list[str] = []
    try:
        cluster.start()
        psql = str(cluster.bin / "psql")
        for n, mb in enumerate(sizes):
            folder = work / f"m{mb}"
            folder.mkdir()
            path = folder / "001_seed.sql"
            rows = generate(path, mb * 1000 * 1000)
            size = path.stat().st_size
            results: list[float] = []
            for who in ("runner", "psql"):
                db = f"mem_{n}_{who}"
                with cluster.connect() as conn:
                    conn.execute(f"CREATE DATABASE {db}")
                env = {**os.environ, "DATABASE_URL": cluster.url(db),
                       "MIGRATIONS_DIR": str(folder), "MIGRATE_LOG_FORMAT": "json",
                       "MIGRATE_TERMINATION_LOG": ""}
                cmd = ([sys.executable, "-m", "runner", "migrate"] if who == "runner" else
                       [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(path),
                        cluster.url(db)])
                code, rss = peak(cmd, env, work / f"{who}.log")
                with cluster.connect(db) as conn:
                    row = conn.execute("SELECT count(*) FROM code").fetchone()
                if code or not row or row[0] != rows:
                    failures.append(f"{who} on {mb} MB: exit {code}, rows {row}")
                results.append(rss)
            limit = 64 + 3 * size / MIB
            ok = results[0] < limit and results[0] < LIMIT_MIB
            if not ok:
                failures.append(f"runner on {mb} MB: {results[0]:.0f} MiB, target "
                                f"{min(limit, LIMIT_MIB):.0f} MiB")
            rows_out.append(f"{size / MIB:9.1f}  {results[0]:10.1f}  {results[1]:8.1f}  "
                            f"{results[0] / size * MIB:7.2f}x  {limit:9.0f}  "
                            f"{'met' if ok else 'MISSED'}")
            print(rows_out[-1] if n else f"{'file MiB':>9}  {'runner MiB':>10}  "
                  f"{'psql MiB':>8}  {'runner/file':>8}  {'64+3x MiB':>9}\n{rows_out[-1]}",
                  flush=True)
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("\nFAIL: " + "\nFAIL: ".join(failures), file=sys.stderr)
        return 1
    return 0
