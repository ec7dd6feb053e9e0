"""A fleet of cloned site databases for the fleet-mode tests (SPEC §11): a template
migrated to 002 with the PACS migrations, each site made from it with
CREATE DATABASE ... TEMPLATE (milliseconds, instead of a migrate per site)."""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT, Db, run
from tests.pg import Cluster

PACS = ROOT / "migrations"
_fleets = itertools.count()
_templates: dict[int, str] = {}


def pacs_folder(tmp: Path) -> Path:
    folder = tmp / "pacs"
    folder.mkdir()
    for f in PACS.glob("*.sql"):
        shutil.copy(f, folder / f.name)
    return folder


def template(cluster: Cluster, folder: Path) -> str:
    """The database at 002, made once per cluster."""
    if cluster.port not in _templates:
        name = f"fleet_tpl_{os.getpid()}"
        with cluster.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        result = run(cluster.url(name), folder, "migrate", "--to", "2")
        assert result.code == 0, result.stderr
        _templates[cluster.port] = name
    return _templates[cluster.port]


@dataclass
class Sites:
    cluster: Cluster
    folder: Path
    names: list[str]

    def db(self, name: str) -> Db:
        return Db(self.cluster, name)

    def version(self, name: str) -> int | None:
        return self.db(name).scalar(
            "SELECT max(version) FROM _sqlx_migrations WHERE success")

    def versions(self) -> dict[str, int | None]:
        return {n: self.version(n) for n in self.names}

    @property
    def base(self) -> str:
        return self.cluster.url("postgres")

    def drop(self) -> None:
        """Dropped after the test: a session's clones would fill the disk otherwise."""
        with self.cluster.connect() as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def add(self, name: str) -> None:
        tpl = template(self.cluster, self.folder)
        with self.cluster.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
        self.names.append(name)


def make_sites(cluster: Cluster, tmp: Path, count: int) -> Sites:
    """`count` sites at 002, named f<N>_site_000..., on `cluster`."""
    folder = pacs_folder(tmp)
    sites = Sites(cluster, folder, [])
    prefix = f"f{os.getpid()}x{next(_fleets)}"
    for i in range(count):
        sites.add(f"{prefix}_site_{i:03d}")
    return sites
