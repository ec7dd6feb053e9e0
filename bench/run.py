"""Benchmark: migration-runner against the psql floor and its peers, on a throwaway
PostgreSQL (fsync on).

    .venv/bin/python bench/run.py [--runs 5] [--migrations 300] [--racers 8] [--no-peers]
        [--before CHECKOUT]

Medians of psql floors, apply-all, no-op, race and Python start-up floors, each run on a
fresh database; the same for dbmate and yoyo-migrations (bench/peers.py); every target of
the performance issue with its verdict; statements per migration (see bench/README.md).
Exits 1 when any run of the runner or psql was incorrect (a migration not applied exactly
once, or a process exiting non-zero); a missed target, or a peer's failure, is reported,
not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from peers import Peer, install_peers
from report import machine, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.pg import Cluster  # noqa: E402  (the tests' throwaway-server helper)

VENV_BIN = Path(sys.executable).parent
RUNNER = VENV_BIN / "migration-runner"
# The console script pip writes for `migration-runner` (pyproject's [project.scripts]).
SCRIPT = """#!{python}
import sys
from runner.cli import run
if __name__ == "__main__":
    sys.exit(run())
"""
ROWS = 10  # rows each generated migration inserts
GNU_TIME = shutil.which("time")  # Debian's `time` package


def events(log: Path, start: int = 0) -> list[dict[str, Any]]:
    """The JSON events of a runner's log, from byte `start` on."""
    found = []
    with log.open("rb") as f:
        f.seek(start)
        for line in f.read().decode().splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def at(e: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(e["timestamp"]).timestamp()


class BenchCluster(Cluster):
    """The tests' cluster, started with durability on: fsync, full_page_writes and
    synchronous_commit as a production server has them. Autovacuum off: a worker waking
    on the catalogs mid-run, at a random moment, was the widest source of spread."""

    def start(self, wait: bool = True) -> None:
        opts = (f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 "
                "-c fsync=on -c full_page_writes=on -c synchronous_commit=on "
                "-c autovacuum=off")
        cmd = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.tmp / "pg.log"),
               "-o", opts, "-w", "start"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class Proc:
    seconds: float
    code: int
    rss_kib: int


@dataclass
class Bench:
    cluster: BenchCluster
    work: Path
    n: int
    racers: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)  # (name, SQL), in order
    peers: list[Peer] = field(default_factory=list)
    live: list[subprocess.Popen[bytes]] = field(default_factory=list)
    bad_races: int = 0  # timed rounds whose race was incorrect
    _dbs: int = 0
    python: Path = Path(sys.executable)
    runner: Path = RUNNER
    before: Path | None = None  # --before: the other build's runner

    def generate(self) -> None:
        """N migrations: each a small table with an index and 10 rows, plus a row in
        bench_applied (no unique key there, so a double apply would show as a count)."""
        folder = self.work / "migrations"
        folder.mkdir()
        width = max(3, len(str(self.n)))
        bodies = []
        for i in range(1, self.n + 1):
            t = f"bench_t{i:0{width}d}"
            values = ", ".join(f"({k}, 'row {k}')" for k in range(1, ROWS + 1))
            body = ("CREATE TABLE bench_applied (version integer NOT NULL, "
                    "backend integer NOT NULL DEFAULT pg_backend_pid());\n" if i == 1 else "")
            body += (f"CREATE TABLE {t} (id integer PRIMARY KEY, label text NOT NULL,\n"
                     "    created_at timestamptz NOT NULL DEFAULT now());\n"
                     f"CREATE INDEX {t}_label_idx ON {t} (label);\n"
                     f"INSERT INTO {t} (id, label) VALUES {values};\n"
                     f"INSERT INTO bench_applied (version) VALUES ({i});\n")
            self.files.append((f"{i:0{width}d}_create_{t}.sql", body))
            (folder / self.files[-1][0]).write_text(body)
            bodies.append(body)
        (self.work / "all.sql").write_text("".join(bodies))
        (self.work / "all_wrapped.sql").write_text(
            "".join(f"BEGIN;\n{b}COMMIT;\n" for b in bodies))
        # What proposal "async commit but the last" could reach: the WAL flush of the last,
        # synchronous commit makes every earlier one durable too.
        (self.work / "all_async.sql").write_text("".join(
            f"BEGIN;\n{'' if i == self.n else 'SET LOCAL synchronous_commit = off;'}\n"
            f"{b}COMMIT;\n" for i, b in enumerate(bodies, 1)))

    def spawn(self, cmd: Sequence[str], env: dict[str, str] | None, log: str) -> int:
        with open(self.work / log, "ab") as err:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        self.live.append(proc)
        return proc.pid

    def reap(self, pid: int) -> tuple[int, int]:
        """Exit code and peak RSS (KiB) of one child, from wait4's resource usage: never
        less than this process's own peak, which the child had until its exec."""
        _, status, usage = os.wait4(pid, 0)
        for proc in self.live:
            if proc.pid == pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                self.live.remove(proc)
                break
        return os.waitstatus_to_exitcode(status), usage.ru_maxrss

    def run(self, cmd: Sequence[str], env: dict[str, str] | None = None,
            log: str = "other.log", rss: bool = False) -> Proc:
        """`rss`: the child's own peak, through GNU time (a small process forking it),
        where it is installed; wait4's figure would be the bench's own, ~37 MiB, for a
        child smaller than that."""
        out = self.work / "rss"
        if rss and GNU_TIME:
            cmd = [GNU_TIME, "-f", "%M", "-o", str(out), *cmd]
        started = time.perf_counter()
        pid = self.spawn(cmd, env, log)
        code, rss_kib = self.reap(pid)
        seconds = time.perf_counter() - started
        if rss and GNU_TIME:
            rss_kib = int(out.read_text().split()[-1]) if out.exists() else 0
            out.unlink(missing_ok=True)
        return Proc(seconds, code, rss_kib)

    def kill_children(self) -> None:
        for proc in self.live:
            proc.kill()
            proc.wait()
        self.live.clear()

    def fresh_db(self) -> str:
        self._dbs += 1
        name = f"bench_{self._dbs}"
        with self.cluster.connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
            conn.execute("CHECKPOINT")  # no run pays for writing out the one before
        return name

    def drop_db(self, name: str) -> None:
        with self.cluster.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def python_env(self) -> dict[str, str]:
        """Bytecode cached, as in an image built by pip, but in our temp dir: nothing is
        written into the repository, and PYTHONDONTWRITEBYTECODE in the caller's
        environment does not make every run compile the runner from source."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {**env, "PYTHONPYCACHEPREFIX": str(self.work / "pycache")}

    def install(self, root: Path = ROOT, name: str = "venv") -> Path:
        """The runner as the image has it: a plain install, not the development venv's
        editable one, whose import hook (`.pth` finder) costs every start ~17 ms. A venv
        of our own whose `.pth` puts the checkout (`root`: this one, or --before's) and
        the development venv's site-packages on sys.path: the same code and dependencies,
        no hooks. Then compile and cache what the runs will import (untimed). Returns the
        console script."""
        venv = self.work / name
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python*/site-packages"))
        deps = next(VENV_BIN.parent.glob("lib/python*/site-packages"))
        (site / "checkout.pth").write_text(f"{root}\n{deps}\n")
        python = venv / "bin" / "python"
        runner = venv / "bin" / "migration-runner"
        runner.write_text(SCRIPT.format(python=python))
        runner.chmod(0o755)
        p = self.run([str(python), "-c", "import runner.cli, runner.commands.migrate, pglast"],
                     self.python_env())
        if p.code:
            raise SystemExit(f"cannot import the runner (see {self.work}/other.log)")
        if root == ROOT:
            self.python, self.runner = python, runner
        return runner

    def runner_env(self, db: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.python_env(), "DATABASE_URL": self.cluster.url(db),
                "MIGRATIONS_DIR": str(self.work / "migrations"),
                "MIGRATE_LOG_FORMAT": "json", "MIGRATE_TERMINATION_LOG": "", **(extra or {})}

    def scalars(self, db: str, sql: str) -> tuple[int, ...]:
        with self.cluster.connect(db) as conn:
            row = conn.execute(sql).fetchone()
        return tuple(int(str(v)) for v in row or ())

    def check(self, what: str, db: str, codes: list[int], bookkeeping: bool = True) -> None:
        """Every migration exactly once, every process exit 0; else FAIL, loudly."""
        problems = [f"exit codes {codes}"] if any(codes) else []
        try:
            rows, versions = self.scalars(
                db, "SELECT count(*), count(DISTINCT version) FROM bench_applied")
            if (rows, versions) != (self.n, self.n):
                problems.append(f"bench_applied has {rows} rows for {versions} versions")
            if bookkeeping:
                applied, ok_audit = self.scalars(db, (
                    "SELECT (SELECT count(*) FROM migration_history WHERE status = 'applied'),"
                    " (SELECT count(*) FROM migration_audit WHERE success AND direction='up')"))
                if (applied, ok_audit) != (self.n, self.n):
                    problems.append(f"{applied} applied history rows, {ok_audit} successful "
                                    f"audit rows, for {self.n} migrations")
        except psycopg.Error as exc:
            problems.append(f"cannot count what was applied: {str(exc).splitlines()[0]}")
        if problems:
            message = f"FAIL {what} ({db}): " + "; ".join(problems)
            print(f"\n!!! {message}  (logs in {self.work})\n", file=sys.stderr, flush=True)
            self.failures.append(message)

    def forget_warmup(self) -> None:
        """The warm-up round's figures go; its failures still fail the bench."""
        self.samples.clear()
        self.bad_races = 0
        for peer in self.peers:
            peer.race_faults.clear()
            peer.other_faults.clear()

    def add(self, row: str, value: float) -> None:
        self.samples.setdefault(row, []).append(value)

    def psql(self, row: str, script: str) -> None:
        db = self.fresh_db()
        psql = str(self.cluster.bin / "psql")
        p = self.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1",
                      *(["-1"] if script == "all.sql" else []),
                      "-f", str(self.work / script), "-d", self.cluster.url(db)], log="psql.log")
        self.check(row, db, [p.code], bookkeeping=False)
        self.add(row, p.seconds)
        self.drop_db(db)

    def apply_all_and_noop(self) -> None:
        db = self.fresh_db()
        env = self.runner_env(db)
        log = self.work / "runner-apply.log"
        seen = log.stat().st_size if log.exists() else 0
        spawned = time.time()
        p = self.run([str(self.runner), "migrate"], env, log=log.name, rss=True)
        self.check("apply-all", db, [p.code])
        self.add("apply-all", p.seconds)
        self.apply_phases(events(log, seen), spawned)
        self.add("apply-all peak RSS", p.rss_kib / 1024)
        for _ in range(3):  # cheap, and the number every pod start pays: more samples
            p = self.run([str(self.runner), "migrate"], env, log="runner-noop.log")
            self.check("no-op", db, [p.code])
            self.add("no-op", p.seconds)
        p = self.run([str(self.runner), "migrate"], env, log="runner-noop.log", rss=True)
        self.check("no-op", db, [p.code])
        self.add("no-op peak RSS", p.rss_kib / 1024)
        self.drop_db(db)

    def apply_all_before(self) -> None:
        """apply-all with --before's build, in the same round as this build's."""
        assert self.before is not None
        db = self.fresh_db()
        p = self.run([str(self.before), "migrate"], self.runner_env(db),
                     log="runner-before.log")
        self.check("apply-all (before)", db, [p.code])
        self.add("apply-all (before)", p.seconds)
        self.drop_db(db)

    def race(self) -> None:
        db = self.fresh_db()
        env, log = self.runner_env(db), f"runner-race-{db}.log"
        spawned, started = time.time(), time.perf_counter()
        pids = [self.spawn([str(self.runner), "migrate"], env, log) for _ in range(self.racers)]
        codes = [self.reap(pid)[0] for pid in pids]
        self.add("race", time.perf_counter() - started)
        failed = len(self.failures)
        self.check(f"race of {self.racers}", db, codes)
        self.bad_races += len(self.failures) > failed
        self.race_phases(self.work / log, spawned, time.time())
        self.drop_db(db)

    def apply_phases(self, logged: list[dict[str, Any]], spawned: float) -> None:
        """Where apply-all's time goes, from its own events: everything before the first
        file (start-up, connecting, the lock, the history, lexing), then the files."""
        pending = [at(e) for e in logged if e.get("event") == "migrations_pending"]
        done = [at(e) for e in logged if e.get("event") == "migrations_complete"]
        if pending and done:
            self.add("  apply-all: start -> migrations_pending", pending[0] - spawned)
            self.add("  apply-all: migrations_pending -> complete", done[0] - pending[0])

    def race_phases(self, log: Path, spawned: float, ended: float) -> None:
        """Where the race's wall time goes, from the runners' own events: start-up until
        the winner holds the lock, its migrations, and the hand-off until the last exit."""
        logged = events(log)
        locks = [at(e) for e in logged if e.get("event") == "lock_acquired"]
        done = [at(e) for e in logged if e.get("event") == "migrations_complete"
                and e.get("applied")]
        if locks and done:
            self.add("  race: start -> first lock_acquired", min(locks) - spawned)
            self.add("  race: first lock -> winner done", max(done) - min(locks))
            self.add("  race: winner done -> last runner exited", ended - max(done))

    def python_floors(self) -> None:
        py = str(self.python)
        for row, code in (("python -c pass", "pass"), ("import psycopg", "import psycopg"),
                          ("import runner.cli", "import runner.cli")):
            p = self.run([py, "-c", code], self.python_env())
            if p.code:
                self.failures.append(f"FAIL {row}: exit {p.code}")
            self.add(row, p.seconds)

    def round(self) -> None:
        self.psql("psql -1 (one transaction)", "all.sql")
        self.psql("psql, BEGIN/COMMIT per file", "all_wrapped.sql")
        self.psql("psql, per file, async commit but last", "all_async.sql")
        if self.before:
            self.apply_all_before()
        self.apply_all_and_noop()
        self.race()
        for peer in self.peers:
            peer.measure(self)
        self.python_floors()

    def statements(self) -> tuple[int, int]:
        """Statements the server logs for the runner's sessions (log_statement=all set
        through PGOPTIONS, so only they log): one apply-all, then one no-op."""
        db = self.fresh_db()
        env = self.runner_env(db, {"PGOPTIONS": "-c log_statement=all"})
        counts = []
        for what in ("apply-all", "no-op"):
            log = self.cluster.tmp / "pg.log"
            before = log.stat().st_size
            p = self.run([str(self.runner), "migrate"], env, log="runner-logged.log")
            self.check(f"{what} (log_statement=all)", db, [p.code])
            time.sleep(0.2)  # the server's logging collector is not ours to flush
            with open(log, "rb") as f:
                f.seek(before)
                text = f.read().decode(errors="replace")
            counts.append(sum(1 for line in text.splitlines()
                              if "LOG:  statement: " in line or "LOG:  execute " in line))
        self.drop_db(db)
        return counts[0], counts[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each row (default 5)")
    ap.add_argument("--migrations", type=int, default=300, help="generated files (default 300)")
    ap.add_argument("--racers", type=int, default=8, help="runners in the race (default 8)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first round")
    ap.add_argument("--memory", action="store_true",
                    help="instead: peak RSS against file size, runner and psql (memory.py)")
    ap.add_argument("--sizes", default="1,10,50", help="--memory: file sizes in MB")
    ap.add_argument("--no-peers", action="store_true", help="without dbmate and yoyo")
    ap.add_argument("--before", type=Path, metavar="CHECKOUT",
                    help="also time apply-all with the runner of this checkout (e.g. a "
                    "`git worktree add` of an earlier commit), in every round")
    args = ap.parse_args(argv)
    if args.memory:
        import memory  # bench/memory.py, beside this script

        return memory.run([int(size) for size in args.sizes.split(",")])
    if args.runs < 1 or args.migrations < 1 or args.racers < 1:
        ap.error("--runs, --migrations and --racers must be at least 1")
    if not RUNNER.exists():
        ap.error(f"{RUNNER} not found: run with the venv's python (make install)")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)  # even when started with SIGINT ignored
    work = Path(tempfile.mkdtemp(prefix="mr-bench-"))
    cluster: BenchCluster | None = None
    bench: Bench | None = None
    keep = False
    try:
        cluster = BenchCluster()
        cluster.start()
        bench = Bench(cluster, work, args.migrations, args.racers)
        bench.generate()
        bench.install()
        if args.before:
            bench.before = bench.install(args.before.resolve(), "venv-before")
        if not args.no_peers:
            bench.peers = install_peers(work, bench.files)
        print(f"machine: {machine(cluster)}", flush=True)
        if not GNU_TIME:
            print("GNU time not found (apt-get install time): peak RSS rows show at least "
                  "the bench's own", flush=True)
        print(f"{args.migrations} migrations, {args.runs} runs, {args.racers} racers; "
              f"server port {cluster.port}, fsync on; work dir {work}", flush=True)
        if not args.no_warmup:
            print("warm-up round (untimed) ...", flush=True)
            bench.round()
            bench.forget_warmup()
        for i in range(args.runs):
            print(f"round {i + 1}/{args.runs} ...", flush=True)
            bench.round()
        logged = bench.statements()
        report(bench, logged)
        print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if bench.failures:
            print("\nFAIL: " + "\nFAIL: ".join(bench.failures), file=sys.stderr)
            keep = True
            return 1
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the server and removing its files", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup must not be cut short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if bench is not None:
            bench.kill_children()
        if cluster is not None:
            cluster.destroy()
        if keep:
            print(f"generated files and logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
