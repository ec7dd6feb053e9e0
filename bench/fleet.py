"""Benchmark: fleet mode (README "Fleet mode") on a throwaway PostgreSQL (fsync on).

    .venv/bin/python bench/fleet.py [--sites 200] [--runs 3]

Sites are clones (CREATE DATABASE ... TEMPLATE) of a database migrated to 002 with the
PACS migrations. Rows, each a median of --runs:
  up-to-date, one process     `migrate` over every site, all applied: one process,
                              MIGRATE_CONCURRENCY=4
  up-to-date, N processes     the single-database `migrate` once per site, one after the
                              other, and 4 at a time
  apply 003, concurrency C    `migrate` over every site at 002 (003 pending), C = 1, 4, 8;
                              003 is rolled back (fleet `rollback`, untimed) before each
Every run is checked (exit 0, every site at the expected version); exit 1 when one was not.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Bench, BenchCluster, machine  # bench/run.py


class Fleet:
    def __init__(self, bench: Bench, sites: int) -> None:
        self.bench = bench
        self.names = [f"site_{i:03d}" for i in range(sites)]
        self.results: dict[str, list[float]] = {}
        self.failed = False

    def env(self, **extra: str) -> dict[str, str]:
        return self.bench.runner_env("postgres", {"MIGRATE_TARGETS": ",".join(self.names),
                                                  **extra})

    def timed(self, row: str, cmd: list[str], env: dict[str, str]) -> None:
        p = self.bench.run(cmd, env, "fleet")
        if p.code:
            print(f"FAIL: {row} exited {p.code} (see {self.bench.work}/fleet.log)", flush=True)
            self.failed = True
        self.results.setdefault(row, []).append(p.seconds)

    def versions(self, expected: int) -> None:
        wrong = []
        for name in self.names:
            found = self.bench.scalars(name, "SELECT max(version) FROM _sqlx_migrations")
            if found != (expected,):
                wrong.append(name)
        if wrong:
            print(f"FAIL: {len(wrong)} sites not at {expected}: {wrong[:5]}", flush=True)
            self.failed = True

    def setup(self) -> None:
        work, cluster = self.bench.work, self.bench.cluster
        folder = work / "migrations"
        folder.mkdir()
        for f in (ROOT / "migrations").glob("*.sql"):
            shutil.copy(f, folder / f.name)
        with cluster.connect() as conn:
            conn.execute("CREATE DATABASE fleet_template")
        p = self.bench.run([str(self.bench.runner), "migrate", "--to", "2"],
                           self.bench.runner_env("fleet_template"), "setup")
        if p.code:
            raise SystemExit(f"template not migrated (see {work}/setup.log)")
        with cluster.connect() as conn:
            for name in self.names:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE fleet_template")
            conn.execute("CHECKPOINT")

    def up_to_date(self) -> None:
        runner = str(self.bench.runner)
        self.timed("up-to-date, one process (concurrency 4)", [runner, "migrate"], self.env())
        self.versions(3)

        def one(name: str) -> int:
            env = self.bench.runner_env(name)
            return subprocess.run([runner, "migrate"], env=env, capture_output=True).returncode

        for workers in (1, 4):
            started = time.monotonic()
            with ThreadPoolExecutor(workers) as pool:
                codes = list(pool.map(one, self.names))
            row = f"up-to-date, {len(self.names)} processes, {workers} at a time"
            self.results.setdefault(row, []).append(time.monotonic() - started)
            if any(codes):
                print(f"FAIL: {row}: exit codes {set(codes)}", flush=True)
                self.failed = True

    def apply(self, concurrency: int) -> None:
        runner = str(self.bench.runner)
        p = self.bench.run([runner, "rollback"], self.env(), "rollback")
        if p.code:
            raise SystemExit(f"rollback failed (see {self.bench.work}/rollback.log)")
        self.versions(2)
        with self.bench.cluster.connect() as conn:
            conn.execute("CHECKPOINT")
        self.timed(f"apply 003, concurrency {concurrency}", [runner, "migrate"],
                   self.env(MIGRATE_CONCURRENCY=str(concurrency)))
        self.versions(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mr-fleet-bench-"))
    cluster = BenchCluster()
    cluster.start()
    try:
        bench = Bench(cluster, work, 0, 0)
        bench.install()
        fleet = Fleet(bench, args.sites)
        started = time.monotonic()
        fleet.setup()
        print(f"{args.sites} sites cloned in {time.monotonic() - started:.1f}s; "
              f"{machine(cluster)}", flush=True)
        fleet.timed("warm-up", [str(bench.runner), "migrate"], fleet.env())  # to 003
        fleet.apply(1)  # untimed warm-up round: caches, bytecode
        fleet.results.clear()
        for i in range(args.runs):
            for concurrency in (1, 4, 8):
                fleet.apply(concurrency)
            fleet.up_to_date()
            print(f"round {i + 1}/{args.runs} done", flush=True)
        width = max(len(r) for r in fleet.results)
        print(f"\n{'row':<{width}}  {'n':>2}  {'median':>8}  {'min':>8}  {'max':>8}  per site")
        for row, values in fleet.results.items():
            med = statistics.median(values)
            print(f"{row:<{width}}  {len(values):>2}  {med:>7.2f}s  {min(values):>7.2f}s  "
                  f"{max(values):>7.2f}s  {med / args.sites * 1000:>6.1f} ms")
        return 1 if fleet.failed else 0
    finally:
        bench.kill_children() if "bench" in locals() else None
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
