"""templates/app-repo/.github/workflows/migrations.yml, the CI the app's repository copies
(issue 13 item 7, issue 22 B):
actionlint passes on it, and its steps' commands, run as GitHub would run them (bash -e
-o pipefail, the job's env, the repository as working directory), pass against a real
PostgreSQL — with the runner and squawk of this checkout standing in for the image and
the pip install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Db, runner_env
from tests.pg import Cluster

try:
    import yaml  # PyYAML, which kubernetes-validate brings
except ImportError:  # pragma: no cover
    if os.environ.get("CI"):
        raise
    pytest.skip("PyYAML not installed (bash .ci/image-tools)", allow_module_level=True)

WORKFLOW = ROOT / "templates" / "app-repo" / ".github" / "workflows" / "migrations.yml"
BIN = Path(sys.executable).parent


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        reason = f"{name} not installed (bash .ci/image-tools installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def workflow() -> dict[str, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); nothing here needs it.
    return yaml.safe_load(WORKFLOW.read_text())  # type: ignore[no-any-return]


def run_steps(job: dict[str, Any], cwd: Path, env: dict[str, str]) -> list[str]:
    """Each `run:` step of the job in order, as GitHub runs it; the install steps are
    left to this machine. Returns the names of the steps run."""
    ran = []
    for step in job["steps"]:
        command = step.get("run")
        if command is None or command.startswith("pip install"):
            continue
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", command],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"step {step.get('name')!r}:\n{proc.stdout}{proc.stderr}"
        ran.append(step.get("name", command))
    return ran


def test_actionlint_passes() -> None:
    proc = subprocess.run([str(tool("actionlint")), str(WORKFLOW)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_workflow_does_what_the_design_asks() -> None:
    jobs = workflow()["jobs"]
    migrate = jobs["migrate"]
    assert migrate["container"]["image"].startswith("registry.example.com/pacs/migration-runner:")
    assert migrate["services"]["postgres"]["image"].startswith("postgres:")
    assert migrate["env"]["MIGRATE_HISTORY_FORMAT"] == "sqlx"
    commands = "\n".join(s.get("run", "") for s in migrate["steps"])
    for needle in ("validate --offline", "verify --expect migrations/schema.json",
                   "rollback --to 0"):
        assert needle in commands, needle
    assert commands.count("migration-runner migrate\n") >= 3, "migrate, again, and after rollback"
    squawk = [s["run"] for s in jobs["squawk"]["steps"] if "run" in s]
    assert any(r.startswith("squawk ") for r in squawk)


def test_the_steps_pass_against_a_real_postgresql(db: Db, tmp_path: Path) -> None:
    # The app's repository: its migrations/ folder at the top, as actions/checkout lays it.
    repo = tmp_path / "app"
    shutil.copytree(ROOT / "migrations", repo / "migrations")
    jobs = workflow()["jobs"]
    migrate = jobs["migrate"]
    env = runner_env(db.url, None, **{k: str(v) for k, v in migrate["env"].items()
                                      if k != "DATABASE_URL"})
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    tool("migration-runner")
    ran = run_steps(migrate, repo, env)
    assert len(ran) == 5, ran
    assert db.scalar("SELECT count(*) FROM security.roles") == 5
    # Every migration applied, then rolled back and applied again: two `up` audit rows each.
    assert db.query("SELECT version, count(*) FROM migration_audit WHERE direction = 'up' "
                    "GROUP BY 1 ORDER BY 1") == [(1, 2), (2, 2), (3, 2)]

    tool("squawk")
    assert run_steps(jobs["squawk"], repo, env) == ["squawk (the migration guide's command)"]


def test_a_step_fails_when_a_down_file_leaves_something_behind(db: Db, tmp_path: Path) -> None:
    """The rollback step is a real check: a .down.sql that forgets a table fails it."""
    repo = tmp_path / "app"
    shutil.copytree(ROOT / "migrations", repo / "migrations")
    down = repo / "migrations" / "003_add_mask_tables.down.sql"
    down.write_text(down.read_text().replace("DROP TABLE IF EXISTS annotation.masks;", ""))
    migrate = workflow()["jobs"]["migrate"]
    env = runner_env(db.url, None, **{k: str(v) for k, v in migrate["env"].items()
                                      if k != "DATABASE_URL"})
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    with pytest.raises(AssertionError, match="roll everything back"):
        run_steps(migrate, repo, env)


def guide_steps() -> tuple[str, str]:
    """The migration guide's "Adding a migration" commands: (up to writing the SQL, after)."""
    text = (ROOT / "migrations" / "README.md").read_text()
    block = text.split("## Adding a migration", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    before, after = block.split("# write the SQL", 1)
    return before, after.split("\n", 1)[1]


def test_the_guides_steps_for_a_new_migration_pass_ci(db: Db, cluster: Cluster,
                                                      tmp_path: Path) -> None:
    """A new migration made as migrations/README.md says, then the shipped workflow on a
    fresh database: it passes, `verify --expect migrations/schema.json` included."""
    repo = tmp_path / "app"
    shutil.copytree(ROOT / "migrations", repo / "migrations")
    env = runner_env(db.url, None)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    tool("migration-runner")
    tool("squawk")
    before, after = guide_steps()

    def sh(script: str) -> str:
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{script}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    exports = "\n".join(line for line in before.splitlines() if line.startswith("export "))
    written = sh(before).split()
    forward = repo / written[0]
    assert forward.name == "004_add_study_notes.up.sql", written
    forward.write_text(forward.read_text() + "CREATE TABLE annotation.study_notes (\n"
                       "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
                       "    note text NOT NULL\n);\n")
    sh(f"{exports}\nmigration-runner draft-rollback 4")  # as the guide's comment says
    sh(f"{exports}\n{after}")
    assert "study_notes" in (repo / "migrations" / "schema.json").read_text()

    ci = f"ci_{db.name}"
    with cluster.connect() as conn:
        conn.execute(f'CREATE DATABASE "{ci}"')
    migrate = workflow()["jobs"]["migrate"]
    ci_env = runner_env(cluster.url(ci), None, **{k: str(v) for k, v in migrate["env"].items()
                                                  if k != "DATABASE_URL"})
    ci_env["PATH"] = env["PATH"]
    assert len(run_steps(migrate, repo, ci_env)) == 5
    assert run_steps(workflow()["jobs"]["squawk"], repo, ci_env)


def test_the_image_job_builds_checks_and_pushes_what_prod_pins() -> None:
    """The release flow (issue 22 B): the migrations image is built on the runner image
    the migrate job runs, applied to a fresh database on its own, pushed on a release tag
    only, under the name prod pins for the Job, with the app's tag."""
    spec = workflow()
    image = spec["jobs"]["image"]
    assert set(image["needs"]) == {"squawk", "migrate"}
    assert spec["env"]["RUNNER_IMAGE"] == spec["jobs"]["migrate"]["container"]["image"]
    steps = {s.get("name", ""): s for s in image["steps"]}
    commands = "\n".join(s.get("run", "") for s in image["steps"])
    assert "docker build -f Dockerfile.migrations" in commands
    assert "migrations:ci migrate" in commands and "verify --expect" in commands
    push = next(s for name, s in steps.items() if "push" in name)
    assert push["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert "docker push" in push["run"] and "docker push" not in commands.replace(push["run"], "")
    assert image["services"]["postgres"]["image"] == spec["jobs"]["migrate"]["services"][
        "postgres"]["image"]

    pins = yaml.safe_load((ROOT / "k8s/overlays/prod/images/kustomization.yaml").read_text())
    pinned = {i["name"]: i for i in pins["images"]}
    assert pinned["migration-runner"]["newName"] == spec["env"]["MIGRATIONS_IMAGE"]
    assert pinned["migration-runner"]["newTag"] == pinned["pacs-server"]["newTag"], (
        "one release: the migrations image carries the app's tag")
    assert (ROOT / "templates/app-repo/Dockerfile.migrations").exists()
