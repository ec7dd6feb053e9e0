"""Fleet mode over 200 cloned sites (SPEC §11): deselected by default (a minute or two on
two cores); run with `pytest -m fleet_large`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run
from tests.fleet import make_sites
from tests.pg import Cluster

pytestmark = pytest.mark.fleet_large
SITES = 200


def test_two_hundred_sites_in_eight_shards_then_up_to_date_in_one_process(
        cluster: Cluster, tmp_path: Path) -> None:
    sites = make_sites(cluster, tmp_path, SITES)
    listed = ",".join(sites.names)
    seen: list[str] = []
    for index in range(8):
        result = run(sites.base, sites.folder, "migrate", "--json", MIGRATE_TARGETS=listed,
                     MIGRATE_SHARD_COUNT="8", MIGRATE_SHARD_INDEX=str(index),
                     MIGRATE_CONCURRENCY="8", timeout=600)
        assert result.code == 0, result.stderr[-4000:]
        doc = json.loads(result.stdout)
        assert {t["status"] for t in doc["targets"]} <= {"applied"}
        seen += [t["target"] for t in doc["targets"]]
    assert sorted(seen) == sorted(sites.names)  # each site in exactly one shard
    assert sites.versions() == {n: 3 for n in sites.names}
    again = run(sites.base, sites.folder, "migrate", MIGRATE_TARGETS=listed,
                MIGRATE_CONCURRENCY="8", timeout=600)
    assert again.code == 0, again.stderr[-4000:]
    complete = again.event("fleet_complete")
    assert complete["up_to_date"] == SITES and complete["applied"] == 0
    assert "lock_acquired" not in again.names()  # one read each: no lock, no DDL
    sites.drop()
