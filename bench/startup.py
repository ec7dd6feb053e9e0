"""The no-op start of several commits side by side: what it imports and what that costs.

    .venv/bin/python bench/startup.py [--runs 40] [--migrations 300] COMMIT [COMMIT ...]

Each commit's runner/ is exported (`git archive`) into a temp dir and run from a venv
like bench/run.py's: the checkout's dependencies, no editable-install hook, bytecode
cached. One database with every file applied; the commits' starts are interleaved, each
timed whole (wall, and user + system CPU from wait4), then run once more under
`python -X importtime`. Prints medians: wall and CPU, the import self-times summed for
what `import psycopg` does not import (the runner's share) and per top-level package
(those over 1 ms, or that changed by 0.3 ms or more).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.pg import Cluster  # noqa: E402

START = "import sys\nfrom runner.cli import run\nsys.argv[0] = 'migration-runner'\nrun()\n"
IMPORT = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")
ADDED = "(beyond import psycopg)"


def export(commit: str, work: Path) -> Path:
    """The commit's runner/ and a venv whose .pth puts it before the checkout's
    dependencies; returns the venv's python."""
    tree = work / re.sub(r"[^\w.-]", "_", commit)
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "runner"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    venv = work / f"venv-{tree.name}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = next(Path(sys.executable).parent.parent.glob("lib/python*/site-packages"))
    next(venv.glob("lib/python*/site-packages")).joinpath("runner.pth").write_text(
        f"{tree}\n{deps}\n")
    return venv / "bin" / "python"


def self_times(stderr: str, psycopg_modules: set[str]) -> dict[str, int]:
    """importtime's self µs summed per top-level package, and for ADDED."""
    sums: dict[str, int] = defaultdict(int)
    for line in stderr.splitlines():
        m = IMPORT.match(line)
        if m:
            sums[m[2].split(".")[0]] += int(m[1])
            if m[2] not in psycopg_modules:
                sums[ADDED] += int(m[1])
    return sums


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("commits", nargs="+", metavar="COMMIT")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--migrations", type=int, default=300)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mr-startup-"))
    cluster = Cluster()
    try:
        pythons = {c: export(c, work) for c in args.commits}
        folder = work / "migrations"
        folder.mkdir()
        for i in range(1, args.migrations + 1):
            (folder / f"{i:03d}_t{i}.sql").write_text(f"CREATE TABLE t{i} (id int);\n")
        cluster.start()
        with cluster.connect() as conn:
            conn.execute("CREATE DATABASE startup")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPYCACHEPREFIX=str(work / "pycache"), DATABASE_URL=cluster.url("startup"),
                   MIGRATIONS_DIR=str(folder), MIGRATE_LOG_FORMAT="json",
                   MIGRATE_TERMINATION_LOG="")

        def start(python: Path, *flags: str) -> subprocess.CompletedProcess[str]:
            # cwd: not the checkout, whose runner/ would shadow the commit's
            return subprocess.run([str(python), *flags, "-c", START, "migrate"], env=env,
                                  capture_output=True, text=True, cwd=work, check=True)

        for python in pythons.values():  # applies the files, caches the bytecode
            start(python)
        psycopg_modules = set(subprocess.run(
            [str(pythons[args.commits[0]]), "-c", "import sys, psycopg; print(*sys.modules)"],
            env=env, capture_output=True, text=True, check=True, cwd=work).stdout.split())
        wall: dict[str, list[float]] = defaultdict(list)
        cpu: dict[str, list[float]] = defaultdict(list)
        imports: dict[str, dict[str, list[int]]] = {c: defaultdict(list) for c in args.commits}
        for _ in range(args.runs):
            for commit, python in pythons.items():
                started = time.perf_counter()
                proc = subprocess.Popen([str(python), "-c", START, "migrate"], env=env,
                                        cwd=work, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                wall[commit].append(time.perf_counter() - started)
                cpu[commit].append(usage.ru_utime + usage.ru_stime)
                if proc.returncode:
                    raise SystemExit(f"{commit}: exit {proc.returncode}")
                for name, us in self_times(start(python, "-X", "importtime").stderr,
                                           psycopg_modules).items():
                    imports[commit][name].append(us)

        def ms(values: list[float] | list[int], scale: float) -> str:
            # A package some runs did not import counts as 0 in those.
            padded = list(values) + [0] * (args.runs - len(values))
            return f"{statistics.median(padded) * scale:>10.1f}"

        print(f"{args.runs} no-op starts of each, {args.migrations} files; load average "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; medians, ms")
        print(f"{'':<34}" + "".join(f"{c[:10]:>10}" for c in args.commits))
        print(f"{'wall':<34}" + "".join(ms(wall[c], 1000) for c in args.commits))
        print(f"{'CPU (user + system)':<34}" + "".join(ms(cpu[c], 1000) for c in args.commits))
        names = {n for c in args.commits for n in imports[c]}
        first = imports[args.commits[0]]
        for name in sorted(names, key=lambda n: (n != ADDED, -sum(first.get(n, [0])))):
            row = [statistics.median(imports[c].get(name, [0])) for c in args.commits]
            if max(row) >= 1000 or max(row) - min(row) >= 300:  # µs: 1 ms, or a change
                print(f"{'imports ' + name:<34}" + "".join(ms(imports[c].get(name, []), 0.001)
                                                           for c in args.commits))
        return 0
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
