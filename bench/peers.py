"""The peers in bench/run.py: dbmate and yoyo-migrations, on the same server, files and rounds.

Each is installed into the bench's temp dir with its own ordinary client (nothing is
written into the repository) and skipped with a note where it cannot be. Each gets the
bench's generated migrations in its own layout and is measured as the runner is: apply-all
on a fresh database, the no-op process, and a race of `--racers` processes checked for
every migration applied exactly once and every exit code 0. A peer's failures are its
results: they go in the table, not in the bench's exit status.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from run import Bench

Files = Sequence[tuple[str, str]]  # (file name, SQL) in version order


@dataclass
class Peer:
    name: str
    version: str
    folder: Path
    history: str  # the peer's own table of applied migrations
    command: list[str]  # the migrate-everything command; "{url}" stands for the database's
    race_faults: list[str] = field(default_factory=list)  # one entry per failed race
    other_faults: list[str] = field(default_factory=list)  # apply-all and no-op

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def argv(self, url: str) -> list[str]:
        return [arg.replace("{url}", url) for arg in self.command]

    def faults(self, b: Bench, db: str, codes: list[int]) -> list[str]:
        """What was wrong with a run: non-zero exits, a migration not applied exactly once,
        the peer's history not one row per migration."""
        bad = [c for c in codes if c]
        problems = []
        if bad:
            problems.append(f"{len(bad)} of {len(codes)} exited non-zero ({sorted(set(bad))})")
        try:
            rows, versions = b.scalars(
                db, "SELECT count(*), count(DISTINCT version) FROM bench_applied")
            if (rows, versions) != (b.n, b.n):
                problems.append(f"bench_applied has {rows} rows for {versions} versions")
            (recorded,) = b.scalars(db, f"SELECT count(*) FROM {self.history}")
            if recorded != b.n:
                problems.append(f"{recorded} rows in {self.history}")
        except psycopg.Error as exc:
            problems.append(f"cannot count what was applied: {str(exc).splitlines()[0]}")
        return problems

    def measure(self, b: Bench) -> None:
        """One round: apply-all and three no-ops on one fresh database, a race on another."""
        db = b.fresh_db()
        argv, log = self.argv(b.cluster.url(db)), f"{self.name}.log"
        p = b.run(argv, log=log, rss=True)
        self.note(self.other_faults, "apply-all", self.faults(b, db, [p.code]))
        b.add(f"{self.name} apply-all", p.seconds)
        b.add(f"{self.name} apply-all peak RSS", p.rss_kib / 1024)
        for _ in range(3):
            p = b.run(argv, log=log)
            self.note(self.other_faults, "no-op", self.faults(b, db, [p.code]))
            b.add(f"{self.name} no-op", p.seconds)
        b.drop_db(db)

        db = b.fresh_db()
        argv, started = self.argv(b.cluster.url(db)), time.perf_counter()
        pids = [b.spawn(argv, None, f"{self.name}-race.log") for _ in range(b.racers)]
        codes = [b.reap(pid)[0] for pid in pids]
        b.add(f"{self.name} race", time.perf_counter() - started)
        self.note(self.race_faults, f"race of {b.racers}", self.faults(b, db, codes))
        b.drop_db(db)

    def note(self, into: list[str], what: str, problems: list[str]) -> None:
        if problems:
            into.append("; ".join(problems))
            print(f"  {self.name} {what}: " + "; ".join(problems), flush=True)


def _quiet(cmd: Sequence[str], timeout: float = 600) -> str | None:
    """None when the command succeeded, else the last line it printed."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if p.returncode:
        lines = (p.stderr or p.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit {p.returncode}"
    return None


def dbmate(work: Path, files: Files) -> Peer | str:
    """dbmate from npm (`npm install --prefix`): the package ships the Go binary, run here
    directly rather than through the package's node wrapper, whose start-up is not
    dbmate's. Its layout: one file per migration, `-- migrate:up` then `-- migrate:down`;
    each migration in its own transaction; `schema_migrations` holds the versions.
    `--no-dump-schema`: `migrate` would otherwise run pg_dump after every change."""
    if not shutil.which("npm"):
        return "npm not found"
    prefix = work / "dbmate"
    prefix.mkdir()
    error = _quiet(["npm", "install", "--prefix", str(prefix), "--no-save", "--no-audit",
                    "--no-fund", "--loglevel=error", "dbmate"])
    binary = next(prefix.glob("node_modules/@dbmate/*/bin/dbmate"), None)
    if error or binary is None:
        return f"npm install dbmate failed: {error or 'no binary for this platform'}"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    folder = work / "dbmate-migrations"
    folder.mkdir()
    for name, body in files:
        (folder / name).write_text(f"-- migrate:up\n{body}\n-- migrate:down\n")
    return Peer("dbmate", version.stdout.split()[-1] if version.stdout else "?", folder,
                "schema_migrations",
                [str(binary), "--url", "{url}?sslmode=disable", "--migrations-dir", str(folder),
                 "--no-dump-schema", "migrate"])


def yoyo(work: Path, files: Files) -> Peer | str:
    """yoyo-migrations from PyPI in a venv of its own, with psycopg2 (its `postgresql://`
    driver). Its layout: plain `.sql` files, applied in name order, each in its own
    transaction, under its lock table; `_yoyo_migration` holds what was applied."""
    venv = work / "yoyo-venv"
    error = (_quiet([sys.executable, "-m", "venv", str(venv)])
             or _quiet([str(venv / "bin" / "pip"), "install", "--quiet",
                        "--disable-pip-version-check", "yoyo-migrations", "psycopg2-binary"]))
    if error:
        return f"pip install yoyo-migrations failed: {error}"
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from importlib.metadata import version; print(version('yoyo-migrations'))"],
        capture_output=True, text=True)
    folder = work / "yoyo-migrations"
    folder.mkdir()
    for name, body in files:
        (folder / name).write_text(body)
    return Peer("yoyo", version.stdout.strip() or "?", folder, "_yoyo_migration",
                [str(venv / "bin" / "yoyo"), "apply", "--batch", "--no-config-file",
                 "--database", "{url}", str(folder)])


def install_peers(work: Path, files: Files) -> list[Peer]:
    peers = []
    for make in (dbmate, yoyo):
        print(f"installing {make.__name__} ...", flush=True)
        peer = make(work, files)
        if isinstance(peer, str):
            print(f"  {make.__name__}: skipped, {peer}", flush=True)
        else:
            peers.append(peer)
    return peers
