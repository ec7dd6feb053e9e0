"""`validate` fails (exit 5) when a kustomization beside the migrations does not list
exactly the folder's .sql files (issue 13 item 3): a file missing from the ConfigMap is
silently missing from the pod, whose runner then reports "nothing to do"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runner.folder import kustomization
from tests.conftest import run

Files = Callable[..., Path]
SQL = {"001_a.up.sql": "SELECT 1;", "001_a.down.sql": "SELECT 1;",
       "002_b.up.sql": "SELECT 2;", "002_b.down.sql": "SELECT 2;"}


def generator(*names: str) -> str:
    return ("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "configMapGenerator:\n  - name: pacs-migrations\n    files:\n"
            + "".join(f"      - {n}\n" for n in names))


@pytest.mark.parametrize(("listing", "expected"), [
    # a new migration nobody added: the dev initContainer would say "nothing to do"
    (generator("001_a.down.sql", "001_a.up.sql"),
     ["kustomization.yaml: 002_b.down.sql is not listed", "kustomization.yaml: 002_b.up.sql"]),
    # a file deleted or renamed, still listed: kustomize itself fails on it
    (generator(*sorted(SQL), "003_c.up.sql"), ["lists 003_c.up.sql, which is not in"]),
    (generator(*sorted(SQL), "001_a.up.sql"), ["lists 001_a.up.sql more than once"]),
    # kustomize's key=path: mounted under another name than the runner reads
    (generator("001_a.down.sql", "001_a.up.sql", "002_b.down.sql", "x.sql=002_b.up.sql"),
     ["x.sql=002_b.up.sql mounts 002_b.up.sql under another name"]),
    # flow style, read too
    ("configMapGenerator:\n- name: m\n  files: [001_a.up.sql, '001_a.down.sql']\n",
     ["002_b.down.sql is not listed", "002_b.up.sql is not listed"]),
])
def test_validate_offline_fails_when_the_list_and_the_folder_differ(
        migrations: Files, listing: str, expected: list[str]) -> None:
    folder = migrations({**SQL, "kustomization.yaml": listing})
    result = run(None, folder, "validate", "--offline")
    assert result.code == 5, result.stdout
    problems = result.events[-1]["problems"]
    for needle in expected:
        assert any(needle in p for p in problems), (needle, problems)
    assert len(problems) == len(expected), problems
    assert result.stdout.splitlines() == problems


@pytest.mark.parametrize("name", kustomization.NAMES)
def test_every_name_kustomize_reads_is_checked(migrations: Files, name: str) -> None:
    folder = migrations({**SQL, name: generator("001_a.down.sql", "001_a.up.sql")})
    result = run(None, folder, "validate", "--offline")
    assert result.code == 5
    assert any(p.startswith(f"{name}: 002_b") for p in result.events[-1]["problems"])


@pytest.mark.parametrize("listing", [
    generator(*sorted(SQL)),
    generator(*sorted(SQL), "README.md"),  # other files may be listed: the runner ignores them
    generator(*sorted(SQL)).replace("\n", "\r\n"),
    "configMapGenerator:\n- name: m\n  files:\n  - 001_a.up.sql  # c\n  - \"001_a.down.sql\"\n"
    "  # between\n  - 002_b.up.sql\n  - 002_b.down.sql\n",
])
def test_validate_offline_passes_when_the_list_matches(migrations: Files, listing: str) -> None:
    folder = migrations({**SQL, "kustomization.yaml": listing})
    result = run(None, folder, "validate", "--offline")
    assert result.code == 0, result.stdout


def test_a_folder_without_kustomization_is_not_asked_for_one(migrations: Files) -> None:
    # A ConfigMap mounted at /migrations holds the .sql files only.
    assert run(None, migrations(SQL), "validate", "--offline").code == 0


def test_with_files_inserts_in_sorted_place_and_keeps_the_rest(tmp_path: Path) -> None:
    text = generator("001_a.up.sql", "003_c.up.sql") + "generatorOptions: {}\n"
    (tmp_path / "kustomization.yaml").write_text(text)
    found = kustomization.with_files(tmp_path, ["004_d.up.sql", "002_b.up.sql",
                                                "001_a.up.sql"])
    assert found is not None
    path, new = found
    assert path == tmp_path / "kustomization.yaml"
    assert kustomization.parse(new)[0] == ["001_a.up.sql", "002_b.up.sql", "003_c.up.sql",
                                           "004_d.up.sql"]
    assert new.endswith("      - 004_d.up.sql\ngeneratorOptions: {}\n")
    assert kustomization.with_files(tmp_path / "nowhere", ["x.sql"]) is None
