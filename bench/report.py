"""bench/run.py's report: the rows, the ratios, the runner beside its peers, and every
target of the performance issue with its verdict."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from peers import Peer
    from run import Bench, BenchCluster

RSS_BASE_MIB = 64  # the files issue's memory target: 64 MiB + 3 x the largest file


def machine(cluster: BenchCluster) -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
    with cluster.connect() as conn:
        version = (conn.execute("SHOW server_version").fetchone() or ("?",))[0]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {os.cpu_count()} CPUs "
            f"({model}); PostgreSQL {version}; Python {platform.python_version()}; "
            f"psycopg {psycopg.__version__}; load average {load}")


def report(b: Bench, logged: tuple[int, int]) -> None:
    med = {k: statistics.median(v) for k, v in b.samples.items()}
    print(f"\n{'row':<50}{'n':>3}{'median':>9}{'min':>9}{'max':>9}")
    for row, values in b.samples.items():
        label = {"apply-all": f"apply-all: migrate {b.n} files, fresh db",
                 "no-op": "no-op: migrate, everything applied",
                 "race": f"race: {b.racers} runners at once, fresh db"}.get(row, row)
        unit, digits = ("MiB", 1) if "RSS" in row else ("s", 3)
        print(f"{label + ' (' + unit + ')':<50}{len(values):>3}{med[row]:>9.{digits}f}"
              f"{min(values):>9.{digits}f}{max(values):>9.{digits}f}")

    def ratio(name: str, top: str, bottom: str) -> None:
        print(f"{name:<44}{med[top] / med[bottom]:>8.2f}x{paired(b, top, bottom):>8.2f}x")

    single, per_file = "psql -1 (one transaction)", "psql, BEGIN/COMMIT per file"
    print(f"\n{'ratio':<44}{'medians':>9}{'paired':>9}")
    ratio("apply-all / psql one-transaction floor", "apply-all", single)
    ratio("apply-all / psql per-file-transaction floor", "apply-all", per_file)
    ratio("per-file floor / one-transaction floor", per_file, single)
    ratio("async-but-last floor / one-transaction floor",
          "psql, per file, async commit but last", single)
    ratio("applying the files / one-transaction floor",
          "  apply-all: migrations_pending -> complete", single)
    ratio("race / apply-all", "race", "apply-all")
    if "apply-all (before)" in b.samples:
        ratio("apply-all / apply-all of --before's build", "apply-all", "apply-all (before)")
    compare(b, med)
    apply_all, noop = logged
    print(f"\nstatements the server logged (log_statement=all): apply-all {apply_all}, no-op "
          f"{noop}; ({apply_all} - {noop}) / {b.n} = {(apply_all - noop) / b.n:.2f} per "
          "migration")


def paired(b: Bench, top: str, bottom: str) -> float:
    """The median of the per-round ratios: each pair measured within one round, so less
    exposed to a shared machine's load swings than the ratio of the medians."""
    return statistics.median(
        x / y for x, y in zip(b.samples[top], b.samples[bottom], strict=True))


def compare(b: Bench, med: dict[str, float]) -> None:
    """The runner beside its peers, then every target of the performance issue with its
    verdict. Ratios against psql's one-transaction floor are paired (round by round)."""
    floor, rounds = "psql -1 (one transaction)", len(b.samples["race"])
    runner_races = b.bad_races
    rows = [("migration-runner", "", rounds - runner_races, [])]
    rows += [(p.label, f"{p.name} ", rounds - len(p.race_faults), p.race_faults)
             for p in b.peers]
    print(f"\n{'tool':<24}{'apply-all/floor':>16}{'no-op s':>9}{'race s':>8}"
          f"{'race/apply':>11}{'RSS MiB':>9}  {b.racers}-way race")
    for label, key, correct, faults in rows:
        race = (f"correct in {'the one round' if rounds == 1 else f'all {rounds} rounds'}"
                if not faults else
                f"FAILS in {rounds - correct} of {rounds} rounds: {faults[0]}")
        print(f"{label:<24}{paired(b, key + 'apply-all', floor):>15.2f}x"
              f"{med[key + 'no-op']:>9.3f}{med[key + 'race']:>8.2f}"
              f"{paired(b, key + 'race', key + 'apply-all'):>10.2f}x"
              f"{max(b.samples[key + 'apply-all peak RSS']):>9.1f}  {race}")
    for p in b.peers:
        if p.other_faults:
            print(f"  {p.label}: {len(p.other_faults)} apply-all or no-op runs failed, first: "
                  f"{p.other_faults[0]}")

    def peer(name: str) -> Peer | None:
        return next((p for p in b.peers if p.name == name), None)

    def below(what: str, ours: float, name: str, theirs: Callable[[], float],
              unit: str) -> tuple[str, str, bool | None]:
        found = peer(name)
        if found is None:
            return f"{what} below {name}'s", "skipped", None  # --no-peers, or no install
        value = theirs()
        digits = 2 if unit == "x" else 3
        return (f"{what} below {found.label}'s",
                f"{ours:.{digits}f}{unit} vs {value:.{digits}f}{unit}",
                ours < value)

    apply_all, noop = paired(b, "apply-all", floor), med["no-op"]
    race = paired(b, "race", "apply-all")
    rss, rss_limit = max(b.samples["apply-all peak RSS"]), RSS_BASE_MIB + 3 * max(
        len(sql.encode()) for _, sql in b.files) / 2**20
    targets = [
        ("apply-all <= 1.2x the psql one-transaction floor", f"{apply_all:.2f}x",
         apply_all <= 1.2),
        below("apply-all / floor", apply_all, "dbmate",
              lambda: paired(b, "dbmate apply-all", floor), "x"),
        ("no-op whole process <= 0.15 s", f"{noop:.3f} s", noop <= 0.15),
        below("no-op", noop, "yoyo", lambda: med["yoyo no-op"], " s"),
        (f"{b.racers}-way race correct in every round", f"{rounds - runner_races} of {rounds}",
         runner_races == 0),
        (f"{b.racers}-way race <= 1.3x own apply-all", f"{race:.2f}x", race <= 1.3),
        (f"peak RSS <= {RSS_BASE_MIB} MiB + 3 x largest file ({rss_limit:.1f} MiB)",
         f"{rss:.1f} MiB", rss <= rss_limit),
    ]
    print(f"\n{'target (ratios paired, times medians)':<56}{'measured':>22}  verdict")
    for name, measured, met in targets:
        verdict = "not measured" if met is None else "met" if met else "MISSED"
        print(f"{name:<56}{measured:>22}  {verdict}")
