"""Fleet mode (SPEC §11): target sources, filters, dedup, sharding, and `migrate` over
cloned site databases (a template at 002; 003 is pending on every site)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Result, run
from tests.fleet import Sites, make_sites
from tests.pg import Cluster, free_port
from tests.test_observability import Received, http_server, samples  # noqa: F401

PASSWORD = "Fleet-Pa55word-9"  # the test cluster trusts everyone: any password connects


@pytest.fixture
def sites(cluster: Cluster, tmp_path: Path) -> Iterator[Sites]:
    found = make_sites(cluster, tmp_path, 6)
    yield found
    found.drop()


def fleet(sites: Sites, *args: str, **env: str) -> Result:
    env.setdefault("MIGRATE_TARGETS", ",".join(sites.names))
    env.setdefault("MIGRATE_WAIT_TIMEOUT", "2")
    return run(sites.base, sites.folder, "migrate", *args, **env)


def summary(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def by_target(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in doc["targets"]}


# --- sources, filters, dedup ---------------------------------------------------------

def test_targets_file_with_comments_urls_and_duplicates(sites: Sites, tmp_path: Path) -> None:
    a, b, c = sites.names[:3]
    url = sites.cluster.url(b, password=PASSWORD)
    listing = tmp_path / "targets.txt"
    listing.write_text(f"# hospital sites\n\n{a}\n{url}\n  {b}  \n# {c}\n")
    result = fleet(sites, "--json", MIGRATE_TARGETS_FILE=str(listing), MIGRATE_TARGETS="")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert sorted(by_target(doc)) == [a, b]
    assert result.event("target_duplicate")["target"] == b
    assert sites.versions() == {a: 3, b: 3, c: 2, **{n: 2 for n in sites.names[3:]}}
    assert PASSWORD not in result.stdout + result.stderr


def test_targets_query_include_exclude(sites: Sites, tmp_path: Path) -> None:
    prefix = sites.names[0].rsplit("_site_", 1)[0]
    query = f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' ORDER BY 1 DESC"
    out = tmp_path / "summary.json"
    result = fleet(sites, MIGRATE_TARGETS="", MIGRATE_TARGETS_QUERY=query,
                   MIGRATE_TARGETS_INCLUDE=r".*_site_00[0-4]",
                   MIGRATE_TARGETS_EXCLUDE=r".*_site_001", MIGRATE_SUMMARY_FILE=str(out))
    assert result.code == 0, result.stderr
    chosen = {sites.names[i] for i in (0, 2, 3, 4)}
    assert set(by_target(summary(out))) == chosen
    assert {n for n, v in sites.versions().items() if v == 3} == chosen
    started = result.event("fleet_started")
    assert (started["targets_total"], started["targets_selected"]) == (4, 4)
    # The include regex matches the whole name only: a prefix of it matches nothing.
    result = fleet(sites, MIGRATE_TARGETS_INCLUDE="site_00", MIGRATE_ALLOW_NO_TARGETS="true")
    assert result.code == 0 and result.event("fleet_complete")["up_to_date"] == 0


@pytest.mark.parametrize("env", [
    {"MIGRATE_TARGETS_FILE": "/nonexistent"},
    {"MIGRATE_TARGETS_QUERY": "SELECT 1"},
])
def test_two_sources_are_a_config_error(sites: Sites, env: dict[str, str]) -> None:
    result = fleet(sites, **env)
    assert result.code == 2
    assert "both set" in result.event("run_failed")["error"]
    assert sites.versions() == {n: 2 for n in sites.names}


def test_empty_list_is_exit_2_unless_allowed(sites: Sites) -> None:
    result = fleet(sites, MIGRATE_TARGETS_EXCLUDE=".*")
    assert result.code == 2 and "no target" in result.event("run_failed")["error"]
    result = fleet(sites, MIGRATE_TARGETS_EXCLUDE=".*", MIGRATE_ALLOW_NO_TARGETS="yes")
    assert result.code == 0, result.stderr


def test_bad_query_and_bad_regex_are_config_errors(sites: Sites) -> None:
    assert fleet(sites, MIGRATE_TARGETS="", MIGRATE_TARGETS_QUERY="SELECT nope").code == 2
    result = fleet(sites, MIGRATE_TARGETS_INCLUDE="(")
    assert result.code == 2 and "MIGRATE_TARGETS_INCLUDE" in result.event("run_failed")["error"]


def test_bad_files_exit_5_before_any_target(sites: Sites) -> None:
    (sites.folder / "004_broken.up.sql").write_text("CREATE TABLE (;\n")
    result = fleet(sites)
    assert result.code == 5, result.stderr
    assert "target_started" not in result.names()
    assert sites.versions() == {n: 2 for n in sites.names}


# --- sharding -------------------------------------------------------------------------

SHARDS = """
import json, sys
from runner.fleet import targets
from runner.settings import resolve
names = sys.argv[1].split(",")
out = {}
for count in (1, 2, 3, 8):
    for index in range(count):
        env = {"MIGRATE_TARGETS": ",".join(names), "DATABASE_URL": "postgresql://h:5432/x",
               "MIGRATE_SHARD_COUNT": str(count), "MIGRATE_SHARD_INDEX": str(index)}
        out[f"{count}/{index}"] = [t.key for t in targets.select(resolve({}, env), env).targets]
print(json.dumps(out))
"""


def shards(names: list[str], seed: str = "0") -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", SHARDS, ",".join(names)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, list[str]] = json.loads(out)
    return found


def test_every_target_in_exactly_one_shard_whatever_the_order_and_hash_seed() -> None:
    names = [f"site_{i:03d}" for i in range(60)]
    first = shards(names)
    for count in (1, 2, 3, 8):
        keys = [k for i in range(count) for k in first[f"{count}/{i}"]]
        assert sorted(keys) == sorted(f"h:5432/{n}" for n in names)  # each exactly once
        for i in range(count):
            assert first[f"{count}/{i}"] == sorted(first[f"{count}/{i}"])  # key order
    assert all(first[f"8/{i}"] for i in range(8))  # spread, not piled up
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    assert shards(shuffled, seed="12345") == first
    # A new site lands in one shard; no other site moves.
    grown = shards([*names, "site_new"], seed="random")
    for key, members in grown.items():
        assert [m for m in members if m != "h:5432/site_new"] == first[key]


def test_shard_index_from_job_completion_index(sites: Sites, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    result = fleet(sites, MIGRATE_SHARD_COUNT="3", JOB_COMPLETION_INDEX="2",
                   MIGRATE_SUMMARY_FILE=str(out))
    assert result.code == 0, result.stderr
    assert summary(out)["shard"] == {"index": 2, "count": 3}
    assert result.event("fleet_started")["index"] == 2
    mine = set(by_target(summary(out)))
    assert {n for n, v in sites.versions().items() if v == 3} == mine
    # The setting wins over Kubernetes' variable; an index out of range is exit 2.
    assert fleet(sites, MIGRATE_SHARD_COUNT="3", MIGRATE_SHARD_INDEX="3",
                 JOB_COMPLETION_INDEX="0").code == 2
    assert fleet(sites, MIGRATE_SHARD_COUNT="2", JOB_COMPLETION_INDEX="2").code == 2


def test_indexed_job_simulation(cluster: Cluster, tmp_path: Path) -> None:
    """Four shards as an Indexed Job runs them: two pods at a time, and index 1 twice at
    once (a pod replaced while the old one still runs). Every site migrated once."""
    sites = make_sites(cluster, tmp_path, 12)
    env = {"MIGRATE_TARGETS": ",".join(sites.names), "MIGRATE_SHARD_COUNT": "4",
           "MIGRATE_CONCURRENCY": "2"}
    from tests.conftest import Runner

    for batch in (["0", "1", "1"], ["2", "3"]):
        pods = [Runner(sites.base, sites.folder, "migrate", JOB_COMPLETION_INDEX=i, **env)
                for i in batch]
        for pod in pods:
            result = pod.finish(timeout=120)
            assert result.code == 0, result.stderr
    assert sites.versions() == {n: 3 for n in sites.names}
    for name in sites.names:
        assert sites.db(name).scalar(
            "SELECT count(*) FROM migration_audit WHERE version = 3 AND success") == 1
    sites.drop()


# --- outcomes -------------------------------------------------------------------------

def test_one_site_fails_continue_applies_the_rest_and_names_it(
        sites: Sites, tmp_path: Path, http_server: tuple[str, Received]) -> None:  # noqa: F811
    bad = sites.names[2]
    sites.db(bad).execute("CREATE TABLE annotation.mask_groups (id int)")
    out, term, prom = tmp_path / "summary.json", tmp_path / "termination", tmp_path / "m.prom"
    url, received = http_server
    result = fleet(sites, MIGRATE_ON_ERROR="continue", MIGRATE_SUMMARY_FILE=str(out),
                   MIGRATE_TERMINATION_LOG=str(term), MIGRATE_METRICS_FILE=str(prom),
                   MIGRATE_WEBHOOK_URL=url + "/hook")
    assert result.code == 7, result.stderr
    assert sites.versions() == {n: (2 if n == bad else 3) for n in sites.names}
    doc = summary(out)
    assert doc["targets"][0]["target"] == bad  # failures first
    entry = by_target(doc)[bad]
    assert entry["status"] == "failed" and entry["exit_code"] == 1
    assert entry["error"]["file"] == "003_add_mask_tables.up.sql"
    assert entry["error"]["sqlstate"] == "42P07" and entry["error"]["line"] == 20
    assert doc["summary"]["applied"] == 5 and doc["summary"]["exit_code"] == 7
    line = term.read_text().strip()
    assert line == (f"7: 1 of 6 targets failed (shard 0/1): {bad} "
                    "003_add_mask_tables.up.sql:20 42P07")
    assert result.event("run_failed")["error"] == line
    assert result.stdout.splitlines()[1].startswith(bad)  # the table: failures first
    failed = result.event("target_failed")
    assert (failed["target"], failed["sqlstate"], failed["line"]) == (bad, "42P07", 20)
    assert result.event("target_done")["target"] != bad
    # One webhook message for the shard, naming the site.
    assert len(received.requests) == 1
    body = json.loads(received.requests[0][2])
    assert [f["target"] for f in body["failures"]] == [bad] and bad in body["text"]
    metrics = samples(prom.read_bytes())
    assert metrics[("database_migrations_last_exit_code", (("database", bad),))] == 1
    assert metrics[("database_migrations_total", (("database", sites.names[0]),
                                                  ("outcome", "success")))] == 1
    assert metrics[("database_migrations_targets", (("status", "applied"),))] == 5

    # Resume is running again: the fixed site alone applies; the rest cost one read.
    sites.db(bad).execute("DROP TABLE annotation.mask_groups")
    again = fleet(sites, "--json")
    assert again.code == 0, again.stderr
    statuses = {t["target"]: t["status"] for t in json.loads(again.stdout)["targets"]}
    assert statuses == {n: ("applied" if n == bad else "up_to_date") for n in sites.names}
    locked = {e["target"] for e in again.events if e["event"] == "lock_acquired"}
    assert locked == {bad}  # an up-to-date site: no lock, no DDL


def test_stop_leaves_the_rest_not_started(sites: Sites, tmp_path: Path) -> None:
    first = sites.names[0]  # key order: the first to run
    sites.db(first).execute("CREATE TABLE annotation.mask_groups (id int)")
    out = tmp_path / "summary.json"
    result = fleet(sites, MIGRATE_CONCURRENCY="1", MIGRATE_SUMMARY_FILE=str(out))
    assert result.code == 7, result.stderr
    statuses = {t["target"]: t["status"] for t in summary(out)["targets"]}
    assert statuses == {n: ("failed" if n == first else "not_started") for n in sites.names}
    assert sites.versions() == {n: 2 for n in sites.names}
    assert result.event("fleet_complete")["not_started"] == 5


def test_console_lines_are_prefixed_with_the_site(sites: Sites) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "migrate"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "DATABASE_URL": sites.base, "MIGRATIONS_DIR": str(sites.folder),
             "MIGRATE_TARGETS": sites.names[0], "MIGRATE_LOG_FORMAT": "console",
             "MIGRATE_TERMINATION_LOG": ""}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"[{sites.names[0]}] migration_applied" in proc.stderr


def test_closed_port_among_the_targets(sites: Sites, tmp_path: Path) -> None:
    closed = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/site_gone"
    out = tmp_path / "summary.json"
    result = fleet(sites, MIGRATE_TARGETS=",".join([*sites.names, closed]),
                   MIGRATE_WAIT_TIMEOUT="1", MIGRATE_SUMMARY_FILE=str(out),
                   MIGRATE_ON_ERROR="continue")
    assert result.code == 3, result.stderr  # only a transient failure: a retry can help
    entry = by_target(summary(out))["site_gone"]
    assert entry["status"] == "failed" and entry["exit_code"] == 3
    starts = [e for e in result.events
              if e["event"] == "target_started" and e["target"] == "site_gone"]
    assert len(starts) == 2  # tried again at the end of the shard (MIGRATE_TARGET_RETRIES)
    assert sites.versions() == {n: 3 for n in sites.names}
    assert PASSWORD not in result.stdout + result.stderr + out.read_text()


def test_a_database_that_does_not_exist_fails_for_good(sites: Sites, tmp_path: Path) -> None:
    """3D000 is the server's final word (SPEC §3), in a fleet too: no retry at the end of
    the shard, exit 7 (the Indexed Job fails that index instead of retrying it), and the
    message says the fleet never creates databases."""
    typo = f"{sites.names[0]}_typo"
    out = tmp_path / "summary.json"
    result = fleet(sites, MIGRATE_TARGETS=",".join([*sites.names, typo]),
                   MIGRATE_SUMMARY_FILE=str(out), MIGRATE_ON_ERROR="continue")
    assert result.code == 7, result.stderr
    entry = by_target(summary(out))[typo]
    assert (entry["status"], entry["exit_code"]) == ("failed", 3)
    assert entry["error"]["sqlstate"] == "3D000"
    assert "never creates databases" in entry["error"]["message"]
    starts = [e for e in result.events
              if e["event"] == "target_started" and e["target"] == typo]
    assert len(starts) == 1
    assert sites.versions() == {n: 3 for n in sites.names}


# --- the other commands ----------------------------------------------------------------

def test_status_after_a_partial_run(sites: Sites) -> None:
    bad = sites.names[1]
    sites.db(bad).execute("CREATE TABLE annotation.mask_groups (id int)")
    assert fleet(sites, MIGRATE_CONCURRENCY="1").code == 7  # stop: one failed, 4 not started
    gone = f"postgresql://postgres@127.0.0.1:{free_port()}/site_gone"
    listed = ",".join([*sites.names, gone])
    result = run(sites.base, sites.folder, "status", "--json", "--exit-code",
                 MIGRATE_TARGETS=listed, MIGRATE_WAIT_TIMEOUT="0")
    assert result.code == 7, result.stderr
    doc = json.loads(result.stdout)
    states = {t["target"]: t["state"] for t in doc["targets"]}
    assert states["site_gone"] == "unreachable"
    assert states[sites.names[0]] == "current"
    assert {n for n, s in states.items() if s == "behind"} == set(sites.names[1:])
    assert doc["targets"][0]["target"] == "site_gone"  # worst first
    assert "site_gone unreachable" in result.event("run_failed")["error"]
    # Nothing was changed: status only reads.
    assert sites.versions() == {sites.names[0]: 3, **{n: 2 for n in sites.names[1:]}}
    only_behind = run(sites.base, sites.folder, "status", "--exit-code",
                      MIGRATE_TARGETS=",".join(sites.names))
    assert only_behind.code == 6, only_behind.stderr
    assert "5 behind" in only_behind.stdout
    sites.db(bad).execute("DROP TABLE annotation.mask_groups")
    assert fleet(sites).code == 0
    done = run(sites.base, sites.folder, "status", "--exit-code",
               MIGRATE_TARGETS=",".join(sites.names))
    assert done.code == 0 and "6 current" in done.stdout


def test_rollback_takes_an_explicit_list_only(sites: Sites, tmp_path: Path) -> None:
    two = sites.names[:2]
    assert fleet(sites, MIGRATE_TARGETS=",".join(two)).code == 0
    query = "SELECT datname FROM pg_database"
    refused = run(sites.base, sites.folder, "rollback", MIGRATE_TARGETS_QUERY=query)
    assert refused.code == 2 and "MIGRATE_TARGETS_QUERY" in refused.event("run_failed")["error"]
    listing = tmp_path / "sites.txt"
    listing.write_text("\n".join(two) + "\n")
    result = run(sites.base, sites.folder, "rollback", MIGRATE_TARGETS_FILE=str(listing))
    assert result.code == 0, result.stderr
    assert sites.versions() == {n: 2 for n in sites.names}
    assert [e["target"] for e in result.events if e["event"] == "rollback_applied"] == two


def test_dry_run_per_target_changes_nothing(sites: Sites) -> None:
    result = fleet(sites, "--dry-run", MIGRATE_TARGETS=",".join(sites.names[:2]))
    assert result.code == 0, result.stderr
    assert result.stdout.count("003_add_mask_tables.up.sql") == 2
    assert f"[{sites.names[1]}]" in result.stdout
    assert sites.versions() == {n: 2 for n in sites.names}


def test_server_concurrency_caps_targets_per_host(sites: Sites) -> None:
    result = fleet(sites, MIGRATE_CONCURRENCY="4", MIGRATE_SERVER_CONCURRENCY="1")
    assert result.code == 0, result.stderr
    in_flight, most = 0, 0
    for e in result.events:
        if e["event"] == "target_started":
            in_flight += 1
            most = max(most, in_flight)
        elif e["event"] in ("target_done", "target_failed"):
            in_flight -= 1
    assert most == 1  # one server: one site at a time, whatever MIGRATE_CONCURRENCY says


def test_ahead_site_is_not_a_failure(sites: Sites) -> None:
    ahead = sites.names[0]
    assert fleet(sites, MIGRATE_TARGETS=ahead).code == 0
    sites.db(ahead).execute("INSERT INTO _sqlx_migrations (version, description, success, "
                            "checksum, execution_time) VALUES (99, 'newer image', true, "
                            "'\\x00', 0)")
    result = fleet(sites, "--json", MIGRATE_TARGETS=ahead)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["targets"][0]["status"] == "ahead"


def test_unreachable_target_query_is_exit_3(sites: Sites) -> None:
    base = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = run(base, sites.folder, "migrate", MIGRATE_TARGETS_QUERY="SELECT 'x'",
                 MIGRATE_WAIT_TIMEOUT="0")
    assert result.code == 3, result.stderr
    assert "target_started" not in result.names()
