"""Consistency of the shipped migrations/ folder (no database needed).

- the folder is in sqlx's reversible layout, `NNN_x.up.sql` / `NNN_x.down.sql`, which the
  app's `sqlx::migrate!` and the runner read alike (a `NNN_x_rollback.sql` file would be a
  second migration of version NNN for sqlx);
- every .sql file is listed in migrations/kustomization.yaml (the ConfigMap the Kubernetes
  runner reads) and every listed file exists — the check `validate --offline` makes;
- every file parses as PostgreSQL and keeps to the rules of the folder's README.
"""

from __future__ import annotations

import re

import pglast
import pytest

from runner.folder import kustomization
from tests.conftest import ROOT, run

MIGRATIONS = ROOT / "migrations"
KUSTOMIZATION = MIGRATIONS / "kustomization.yaml"
NAME = re.compile(r"^(?P<version>\d{1,18})_(?P<desc>[A-Za-z0-9_-]+)\.(?P<kind>up|down)\.sql$")


def sql_files() -> list[str]:
    return sorted(p.name for p in MIGRATIONS.glob("*.sql") if not p.name.startswith("."))


def test_folder_has_migrations() -> None:
    assert [n for n in sql_files() if n.endswith(".up.sql")], f"no migrations in {MIGRATIONS}"


def test_every_file_is_an_up_or_down_file_of_its_own_version() -> None:
    versions: dict[tuple[int, str], str] = {}
    for name in sql_files():
        m = NAME.match(name)
        assert m, f"{name}: not NNN_description.up.sql / .down.sql (sqlx's reversible layout)"
        key = (int(m["version"]), m["kind"])
        assert key not in versions, f"{name} and {versions[key]} share version {key[0]}"
        versions[key] = name
    for (version, kind), name in versions.items():
        other = "down" if kind == "up" else "up"
        assert (version, other) in versions, f"{name}: its .{other}.sql file is missing"
        assert versions[(version, other)] == name.replace(f".{kind}.", f".{other}.")


def test_every_sql_file_is_in_the_configmap() -> None:
    assert kustomization.problems(MIGRATIONS) == []
    entries, _ = kustomization.parse(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert entries == sql_files(), "keep the list sorted, as `new` does"


def test_kustomization_keeps_the_generator_shape() -> None:
    text = KUSTOMIZATION.read_text(encoding="utf-8")
    assert re.search(r"^apiVersion: kustomize\.config\.k8s\.io/v1beta1$", text, re.M)
    assert re.search(r"^kind: Kustomization$", text, re.M)
    assert re.search(r"^\s*- name: pacs-migrations$", text, re.M)
    assert "disableNameSuffixHash: true" not in text, "keep the content hash suffix"


@pytest.mark.parametrize("name", sql_files())
def test_file_parses_and_keeps_the_rules(name: str) -> None:
    raw = (MIGRATIONS / name).read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), f"{name}: no BOM (sqlx sends it to the server)"
    assert b"\r\n" not in raw, f"{name}: LF line endings (sqlx hashes the raw bytes)"
    text = raw.decode("utf-8")
    assert text.startswith("-- "), f"{name}: start with the header comment"
    for field in ("Purpose:", "Depends on:", "Rollback:"):
        assert field in text.split("\n\n", 1)[0], f"{name}: header lacks {field!r}"
    statements = pglast.parse_sql(text)
    assert statements, f"{name}: no SQL statements"
    for stmt in (r.stmt for r in statements):
        kind = type(stmt).__name__
        assert kind != "VariableSetStmt", (
            f"{name}: no SET in migration files (the runner sets timeouts)")
        assert not (kind == "IndexStmt" and stmt.concurrent), (
            f"{name}: CREATE INDEX CONCURRENTLY belongs in its own -- no-transaction file")
        # Under sqlx a file's own COMMIT ends sqlx's transaction before it writes the
        # history row: no wrapper, both readers run each file in a transaction anyway.
        assert kind != "TransactionStmt", f"{name}: no BEGIN/COMMIT; the reader adds them"


def test_validate_offline_passes_on_the_shipped_folder() -> None:
    result = run(None, MIGRATIONS, "validate", "--offline")
    assert result.code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: 3 migrations, 3 rollback files"), result.stdout
