"""Consistency of the shipped migrations/ folder (no database needed).

- every migrations/*.sql is listed in migrations/kustomization.yaml (the ConfigMap
  the Kubernetes runner reads) and every listed file exists;
- every forward file has its rollback file, every rollback file its forward file;
- every file parses as PostgreSQL and keeps to the rules of the folder's README.

PyYAML is not a dependency: the `files:` list of the configMapGenerator is read
line by line, which is all this small, hand-written kustomization needs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pglast
import pytest

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
KUSTOMIZATION = MIGRATIONS / "kustomization.yaml"
FORWARD = re.compile(r"^(?P<version>\d{1,18})_(?P<desc>[A-Za-z0-9_-]+?)\.sql$")
ROLLBACK_SUFFIX = "_rollback.sql"


def sql_files() -> list[str]:
    return sorted(p.name for p in MIGRATIONS.glob("*.sql") if not p.name.startswith("."))


def forward_files() -> list[str]:
    return [n for n in sql_files() if not n.endswith(ROLLBACK_SUFFIX)]


def listed_files(text: str) -> list[str]:
    """The entries of every `files:` list in the kustomization, in order.

    A `files:` key opens a list; its items are the following `- name` lines indented
    at least as deep as the key; the first other non-comment line closes it.
    """
    entries: list[str] = []
    files_indent: int | None = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if files_indent is not None:
            if stripped.startswith("- ") and indent >= files_indent:
                entries.append(stripped[2:].strip().strip("'\""))
                continue
            files_indent = None
        if stripped.rstrip(":") in ("files", "- files") and stripped.endswith(":"):
            files_indent = indent
    return entries


def test_listed_files_parser() -> None:
    text = (
        "configMapGenerator:\n"
        "  - name: a\n"
        "    files:\n"
        "      - 001_a.sql   # comment\n"
        "      # a comment line\n"
        "      - '001_a_rollback.sql'\n"
        "  - name: b\n"
        "    literals:\n"
        "      - X=1\n"
    )
    assert listed_files(text) == ["001_a.sql", "001_a_rollback.sql"]


def test_folder_has_migrations() -> None:
    assert forward_files(), f"no migration files in {MIGRATIONS}"


def test_every_sql_file_is_in_the_configmap() -> None:
    listed = listed_files(KUSTOMIZATION.read_text(encoding="utf-8"))
    on_disk = sql_files()
    missing = sorted(set(on_disk) - set(listed))
    stale = sorted(set(listed) - set(on_disk))
    assert not missing, f"add to {KUSTOMIZATION.name} files: {missing}"
    assert not stale, f"listed in {KUSTOMIZATION.name} but not in migrations/: {stale}"
    duplicates = sorted({n for n in listed if listed.count(n) > 1})
    assert not duplicates, f"listed twice in {KUSTOMIZATION.name}: {duplicates}"


def test_kustomization_keeps_the_generator_shape() -> None:
    text = KUSTOMIZATION.read_text(encoding="utf-8")
    assert re.search(r"^apiVersion: kustomize\.config\.k8s\.io/v1beta1$", text, re.M)
    assert re.search(r"^kind: Kustomization$", text, re.M)
    assert re.search(r"^\s*- name: pacs-migrations$", text, re.M)
    assert "disableNameSuffixHash: true" not in text, "keep the content hash suffix"
    assert "*" not in "".join(listed_files(text)), "list files explicitly, no globs"


def test_names_and_versions() -> None:
    versions: dict[int, str] = {}
    for name in forward_files():
        m = FORWARD.match(name)
        assert m, f"{name}: not <version>_<description>.sql"
        version = int(m["version"])
        assert version not in versions, f"{name} and {versions[version]} share version {version}"
        versions[version] = name


def test_every_forward_file_has_its_rollback_and_back() -> None:
    names = set(sql_files())
    no_rollback = [n for n in forward_files() if n[: -len(".sql")] + ROLLBACK_SUFFIX not in names]
    orphans = [
        n
        for n in names
        if n.endswith(ROLLBACK_SUFFIX) and n[: -len(ROLLBACK_SUFFIX)] + ".sql" not in names
    ]
    assert not no_rollback, f"forward files without a rollback file: {no_rollback}"
    assert not orphans, f"rollback files without a forward file: {orphans}"


@pytest.mark.parametrize("name", sql_files())
def test_file_parses_and_keeps_the_rules(name: str) -> None:
    text = (MIGRATIONS / name).read_text(encoding="utf-8")
    assert text.startswith("-- "), f"{name}: start with the header comment"
    for field in ("Purpose:", "Depends on:", "Rollback:"):
        assert field in text.split("\n\n", 1)[0], f"{name}: header lacks {field!r}"
    statements = pglast.parse_sql(text)
    assert statements, f"{name}: no SQL statements"
    for raw in statements:
        stmt = raw.stmt
        kind = type(stmt).__name__
        assert kind != "VariableSetStmt", (
            f"{name}: no SET in migration files (the runner sets timeouts)"
        )
        assert not (kind == "IndexStmt" and stmt.concurrent), (
            f"{name}: CREATE INDEX CONCURRENTLY belongs in its own -- migrate:no-transaction file"
        )
    # BEGIN/COMMIT only as the outer psql-style wrapper.
    control = [type(r.stmt).__name__ == "TransactionStmt" for r in statements]
    if any(control):
        assert control[0] and control[-1] and sum(control) == 2, (
            f"{name}: transaction control only as an outer BEGIN; ... COMMIT; pair"
        )
