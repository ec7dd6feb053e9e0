"""k8s/components/fleet-jobs (SPEC §11), rendered through k8s/overlays/fleet: the canary,
the Indexed Job and the status gate, validated for Kubernetes 1.33+ (backoffLimitPerIndex
and podFailurePolicy FailIndex are GA there), in ArgoCD sync waves."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from tests import test_manifests as manifests
from tests.test_manifests import K8S, containers, docs, env_of, one, render, tool

FLEET = "overlays/fleet"


@pytest.mark.parametrize("version", ["1.33", "1.37"])
def test_fleet_renders_and_validates_strictly(version: str) -> None:
    proc = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, "-"],
                          input=render(FLEET), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed for resource") == len(docs(FLEET)) == 3, proc.stdout


def test_fleet_jobs_run_restricted() -> None:
    manifests.test_every_container_runs_restricted(FLEET)


def runner(job: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in containers(job["spec"]["template"]["spec"]) if c["name"] == "migrate"]
    assert len(found) == 1
    return found[0]


def wave(job: dict[str, Any]) -> int:
    notes = job["metadata"]["annotations"]
    assert notes["argocd.argoproj.io/hook"] == "PreSync"
    return int(notes["argocd.argoproj.io/sync-wave"])


def rules(job: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == "migrate"
            assert rule["onExitCodes"]["operator"] == "In"
            found[rule["action"]] = sorted(rule["onExitCodes"]["values"])
        else:
            found[rule["action"]] = [c["type"] for c in rule["onPodConditions"]]
    return found


def test_indexed_job_shards_the_fleet() -> None:
    job = one(FLEET, "Job", "pacs-fleet-migrate")
    spec, env = job["spec"], env_of(runner(job))
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == int(env["MIGRATE_SHARD_COUNT"])
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert rules(job) == {"FailJob": [2, 5], "FailIndex": [7], "Ignore": ["DisruptionTarget"]}
    assert env["MIGRATE_ON_ERROR"] == "continue"
    assert "MIGRATE_SHARD_INDEX" not in env  # JOB_COMPLETION_INDEX, set by Kubernetes
    assert env["DATABASE_URL"]["secretKeyRef"] == {"name": "pacs-fleet-database", "key": "url"}
    # The release's migrations image, pinned next to the app's (k8s/overlays/prod/images).
    assert "registry.example.com/pacs/pacs-server-migrations:" in runner(job)["image"]


def test_canary_then_fleet_then_status_gate() -> None:
    canary = one(FLEET, "Job", "pacs-fleet-canary")
    fleet = one(FLEET, "Job", "pacs-fleet-migrate")
    gate = one(FLEET, "Job", "pacs-fleet-status")
    assert wave(canary) < wave(fleet) < wave(gate)
    canary_env = env_of(runner(canary))
    assert len(canary_env["MIGRATE_TARGETS"].split(",")) == 2
    assert canary_env["MIGRATE_ON_ERROR"] == "stop"
    assert runner(canary)["args"] == ["migrate"]
    assert runner(gate)["args"] == ["status", "--exit-code"]
    assert "MIGRATE_SHARD_COUNT" not in env_of(runner(gate))  # the whole fleet
    assert {6, 7} <= set(rules(gate)["FailJob"])


def test_connection_budget_stated_matches_the_job() -> None:
    """parallelism x 2 x MIGRATE_CONCURRENCY, as the component's header states it."""
    job = one(FLEET, "Job", "pacs-fleet-migrate")
    parallel = job["spec"]["parallelism"]
    concurrency = int(env_of(runner(job))["MIGRATE_CONCURRENCY"])
    header = (K8S / "components/fleet-jobs/kustomization.yaml").read_text()
    stated = re.search(r"\((\d+) x 2 x (\d+) = (\d+) here\)", header)
    assert stated, header
    assert tuple(map(int, stated.groups())) == (parallel, concurrency, parallel * 2 * concurrency)


def test_readme_documents_every_fleet_setting_event_and_code() -> None:
    from runner.settings import SPECS
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    fleet_specs = SPECS[[s.field for s in SPECS].index("targets"):]
    for spec in fleet_specs:
        assert f"| {spec.env} | {spec.flag} |" in readme, spec.env
    for event in ("fleet_started", "target_started", "target_deferred", "target_done",
                  "target_failed", "target_duplicate", "fleet_complete",
                  "database_migrations_targets"):
        assert f"| `{event}` |" in readme, event
    assert "\n| 7 | fleet mode only" in readme
    deploying = (ROOT / "docs" / "deploying.md").read_text()
    assert "parallelism x 2 x MIGRATE_CONCURRENCY" in deploying
    assert "CONNECTION LIMIT" in deploying
