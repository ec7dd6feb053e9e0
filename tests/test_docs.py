"""What a new user reads and types first (issue 13 items 5, 6, 8, 9): the docs point to
documents the user has, the migration guide's squawk command is the one CI runs, the
README says how to reach the installed command, and each make target says what it
installs and installs only that."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

GUIDE = ROOT / "migrations" / "README.md"
README = ROOT / "README.md"
USER_DOCS = [README, GUIDE, ROOT / ".env.example", ROOT / "docker-compose.yaml",
             ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "k8s").rglob("*.yaml")), *sorted((ROOT / "k8s").rglob("*.sh"))]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_point_to_documents_the_user_has(path: Path) -> None:
    """SPEC.md is the team's contract, not shipped: point to the README's sections."""
    found = re.findall(r"SPEC\b[^\n]{0,20}", path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)}: {found}"


def guide_squawk_command() -> str:
    lines = [line.strip() for line in GUIDE.read_text().splitlines()
             if line.strip().startswith("squawk ")]
    assert len(lines) == 1, f"the guide gives one squawk command, found {lines}"
    return lines[0]


def test_ci_runs_the_guides_squawk_command() -> None:
    command = guide_squawk_command()
    assert command in (ROOT / ".ci" / "run").read_text()
    assert command in (ROOT / "templates" / "app-repo" / ".github" / "workflows" /
                       "migrations.yml").read_text()


def squawk(folder: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "squawk"
    if not binary.exists():
        pytest.skip("squawk not installed (bash .ci/image-tools installs squawk-cli)")
    command = guide_squawk_command().replace("migrations/*.sql", " ".join(
        f"migrations/{p.name}" for p in sorted((folder / "migrations").glob("*.sql"))))
    return subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True,
                          timeout=60, env={"PATH": f"{binary.parent}:/usr/bin:/bin"})


def test_the_guides_squawk_command_passes_on_the_folder_and_catches_unsafe_ddl(
        tmp_path: Path) -> None:
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations")
    ok = squawk(tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "migrations" / "004_unsafe.up.sql").write_text(
        "CREATE INDEX idx_users_email ON security.users (email);\n"
        "ALTER TABLE security.users ADD COLUMN nickname text NOT NULL;\n")
    bad = squawk(tmp_path)
    assert bad.returncode != 0
    for rule in ("require-concurrent-index-creation", "adding-required-field"):
        assert rule in bad.stdout, bad.stdout


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_readme_says_how_to_reach_the_command_after_make_demo() -> None:
    use = section(README.read_text(), "Use")
    assert ".venv/bin/migration-runner" in use and "pip install" in use, use


def test_make_demo_prints_where_the_command_is(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.demo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MIGRATE_HISTORY_FORMAT unset: auto" in proc.stdout
    assert re.search(r"history_format .*format=sqlx", proc.stdout + proc.stderr)
    assert "3 applied" in proc.stdout
    assert ".venv/bin/migration-runner --help" in proc.stdout


def make_dry_run(target: str) -> str:
    proc = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_pgbouncer_is_installed_for_make_test_only() -> None:
    assert "pgbouncer" not in make_dry_run("demo")
    assert "ensure-postgres test" in make_dry_run("test")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace")
@pytest.mark.parametrize(("args", "installs"), [([], None), (["test"], "pgbouncer")])
def test_ensure_postgres_asks_apt_for_pgbouncer_only_when_told(
        tmp_path: Path, args: list[str], installs: str | None) -> None:
    """.ci/ensure-postgres on a machine without PgBouncer (an empty /usr/sbin in a private
    mount namespace), with an apt-get that only records what it is asked for."""
    log = tmp_path / "apt.log"
    fake = tmp_path / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    script = ROOT / ".ci" / "ensure-postgres"
    proc = subprocess.run(
        ["unshare", "-m", "bash", "-c",
         f'mount -t tmpfs none /usr/sbin && PATH="{tmp_path}:$PATH" bash {script} "$@"', "-",
         *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    asked = log.read_text() if log.exists() else ""
    if installs is None:
        assert asked == "", asked
    else:
        assert f"install -y -qq {installs}" in asked, asked


def test_readme_says_what_each_make_command_installs() -> None:
    top = README.read_text().split("\n## ", 1)[0]
    demo = next(line for line in top.splitlines() if line.startswith("make demo"))
    test = next(line for line in top.splitlines() if line.startswith("make test"))
    assert "pgbouncer" not in demo.lower()
    assert "pgbouncer" in top.lower() and "postgresql" in top.lower()
    assert test
