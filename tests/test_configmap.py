"""A mounted ConfigMap updated while the runner reads it (SPEC §10.4): every run sees one
version of the folder, forward and rollback files alike.

The folder is laid out as the kubelet lays it out: `..<timestamp>` directories holding the
files, `..data` a symlink to one of them, and top-level symlinks `name -> ..data/name`.
A thread swaps `..data` between two versions the way the kubelet does (a new link renamed
over the old one) for as long as the runs go on.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runner.folder import files, sqlx_files
from tests.conftest import Db, run

FILES = 100


def version(tag: str, sqlx: bool = False) -> dict[str, str]:
    """Version `a`: every file one statement; version `b`: two, and one file more. Each
    rollback file names its version too."""
    count = FILES if tag == "a" else FILES + 1
    extra = "" if tag == "a" else f" SELECT '{tag}';"
    forward, back = (".up.sql", ".down.sql") if sqlx else (".sql", "_rollback.sql")
    found = {f"{n:03d}_step{forward}": f"INSERT INTO seen VALUES ({n}, '{tag}');{extra} -- {tag}\n"
             for n in range(2, count + 1)}
    found |= {f"{n:03d}_step{back}": f"DELETE FROM seen WHERE version = {n}; -- {tag}\n"
              for n in range(2, count + 1)}
    found[f"001_seen{forward}"] = f"CREATE TABLE seen (version int, tag text);{extra} -- {tag}\n"
    found[f"001_seen{back}"] = f"DROP TABLE seen; -- {tag}\n"
    return found


def configmap(folder: Path, sqlx: bool = False) -> tuple[Path, Path]:
    """Both versions' directories and the top-level links (to every name of either)."""
    folder.mkdir()
    dirs = (folder / "..2026_12_05_08_00_00.1", folder / "..2026_12_05_08_01_00.2")
    names: set[str] = set()
    for path, tag in zip(dirs, "ab", strict=True):
        path.mkdir()
        for name, text in version(tag, sqlx).items():
            (path / name).write_text(text)
            names.add(name)
    os.symlink(dirs[0].name, folder / "..data")
    for name in names:
        os.symlink(f"..data/{name}", folder / name)
    return dirs


@contextmanager
def swapping(folder: Path, dirs: tuple[Path, Path]) -> Iterator[list[int]]:
    """Swap `..data` between the two versions until the block ends, as the kubelet does
    (kubernetes atomic_writer.go: a new link renamed over `..data`); the count of swaps."""
    stop = threading.Event()
    swaps = [0]

    def swap() -> None:
        while not stop.is_set():
            target = dirs[swaps[0] % 2 == 0]
            os.symlink(target.name, folder / "..data_tmp")
            os.replace(folder / "..data_tmp", folder / "..data")
            swaps[0] += 1
            stop.wait(0.0002)

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    try:
        yield swaps
    finally:
        stop.set()
        thread.join(timeout=10)


def tag_of(text: str) -> str:
    found = set(re.findall(r"'(a|b)'|-- (a|b)", text))
    tags = {x or y for x, y in found}
    assert len(tags) == 1, text
    return tags.pop()


def test_every_read_of_a_swapping_configmap_is_one_version(tmp_path: Path) -> None:
    """Forward and rollback files of one read come from one version, in both formats."""
    for sqlx in (False, True):
        folder = tmp_path / f"m{int(sqlx)}"
        dirs = configmap(folder, sqlx)
        read = sqlx_files.read_folder if sqlx else files.read_folder
        seen: set[str] = set()
        with swapping(folder, dirs) as swaps:
            for _ in range(60):
                result = read(folder)
                assert not result.problems
                tags = {tag_of(m.text) for m in result.migrations}
                tags |= {tag_of(files.read_rollback(m).text) for m in result.migrations}
                assert len(tags) == 1, f"one read mixed versions {sorted(tags)}"
                tag = tags.pop()
                assert len(result.migrations) == (FILES if tag == "a" else FILES + 1)
                seen.add(tag)
        assert swaps[0] > 60
        assert seen == {"a", "b"}, "the swaps never showed between two reads"


def plan_versions(stdout: str) -> set[str]:
    """`a` or `b` for each file line of a `--dry-run` plan, by its statement count."""
    counts = re.findall(r"(\d+) statements?$", stdout, re.MULTILINE)
    assert counts, stdout
    tags = {"a" if c == "1" else "b" for c in counts}
    if tags == {"a"}:
        assert len(counts) == FILES, stdout
    if tags == {"b"}:
        assert len(counts) == FILES + 1, stdout
    return tags


def test_dry_runs_and_migrate_under_swaps_see_one_version(db: Db, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    dirs = configmap(folder)
    seen: set[str] = set()
    with swapping(folder, dirs):
        for _ in range(25):
            r = run(db.url, folder, "migrate", "--dry-run")
            assert r.code == 0, r.stderr
            tags = plan_versions(r.stdout)
            assert len(tags) == 1, f"one plan mixed versions:\n{r.stdout}"
            seen |= tags
        r = run(db.url, folder, "migrate")
    assert seen == {"a", "b"}, "the swaps never showed between two runs"
    assert r.code == 0, r.stderr
    rows = db.query("SELECT version, tag FROM seen ORDER BY version")
    (tag,) = {t for _, t in rows}
    assert [v for v, _ in rows] == list(range(2, (FILES if tag == "a" else FILES + 1) + 1))
    expected = {m.version: m.checksum for m in files.load(dirs[tag == "b"])}
    recorded = dict(db.query("SELECT version, checksum FROM migration_history"))
    assert recorded == expected, "the history records other files than the ones applied"


def test_a_version_deleted_while_it_is_read_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet deletes the old `..2026_...` directory right after the swap: a read
    that was half-way through it starts again, on the new version."""
    folder = tmp_path / "m"
    dirs = configmap(folder)
    read_at = files._read_at
    reads: list[str] = []

    def kubelet_first(dir_fd: int, name: str) -> bytes:
        if not reads:  # after the listing, before the first file: an update lands
            os.symlink(dirs[1].name, folder / "..data_tmp")
            os.replace(folder / "..data_tmp", folder / "..data")
            shutil.rmtree(dirs[0])
        reads.append(name)
        return read_at(dir_fd, name)

    monkeypatch.setattr(files, "_read_at", kubelet_first)
    result = files.read_folder(folder)
    assert not result.problems
    assert {tag_of(m.text) for m in result.migrations} == {"b"}
    assert len(result.migrations) == FILES + 1
    assert len(reads) == 1 + 2 * (FILES + 1)  # the vanished file, then all of version b
