"""Memory bounded by the file, not by its parse tree (SPEC §10.4): a large file of
multi-row INSERTs (reference data) is read, checked and applied by a runner process whose
peak RSS stays under 64 MiB + 3 x the file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runner.folder import files, split, statements
from tests.conftest import ROOT, Db, parse_events, runner_cmd, runner_env

MIB = 1024 * 1024
ROWS = 1000  # per INSERT, as pg_dump --rows-per-insert or a generated seed writes them


def seed(path: Path, size: int) -> int:
    """A file of about `size` bytes of multi-row INSERTs, non-ASCII text among the
    values; the number of rows."""
    rows = 0
    with path.open("w", encoding="utf-8") as f:
        f.write("CREATE TABLE code (id int PRIMARY KEY, scheme text, meaning text);\n")
        while f.tell() < size:
            values = ",\n".join(f"({rows + i}, 'DCM', 'CT 영상 촬영 code {rows + i}; see ''A''')"
                                for i in range(1, ROWS + 1))
            f.write(f"INSERT INTO code (id, scheme, meaning) VALUES\n{values};\n")
            rows += ROWS
    return rows


def peak_rss(url: str, folder: Path, tmp: Path, *args: str) -> tuple[int, int, str]:
    """(exit code, the runner process's own peak RSS in bytes, its stderr)."""
    with (tmp / "out").open("w") as out, (tmp / "err").open("w") as err:
        proc = subprocess.Popen(runner_cmd(*args), env=runner_env(url, folder), stdout=out,
                                stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, (tmp / "err").read_text()


def test_a_large_seed_file_applies_within_64mib_plus_three_times_its_size(
        db: Db, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "001_seed.sql"
    rows = seed(path, 20 * MIB)
    size = path.stat().st_size
    limit = 64 * MIB + 3 * size
    for args in (("validate", "--offline"), ("migrate", "--dry-run"), ("migrate",)):
        code, peak, stderr = peak_rss(db.url, folder, tmp_path, *args)
        assert code == 0, stderr
        assert peak < limit, (f"{' '.join(args)}: peak RSS {peak / MIB:.0f} MiB for a "
                              f"{size / MIB:.0f} MB file; limit {limit / MIB:.0f} MiB")
    assert db.scalar("SELECT count(*) FROM code") == rows
    assert db.scalar("SELECT meaning FROM code WHERE id = 7") == "CT 영상 촬영 code 7; see 'A'"
    applied = [e for e in parse_events(stderr) if e.get("event") == "migration_applied"]
    assert [e["version"] for e in applied] == [1]


TRICKY = """-- a file the scanner cuts wrongly, or where a chunk may end anywhere
CREATE TABLE t (id int, note text);
CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;
INSERT INTO t VALUES (1, 'a;b'), (2, E'c\\';d'), (3, 'straße; ü');
/* a /* nested; */ comment */ DO $$ BEGIN PERFORM 1; END $$;
CREATE RULE r AS ON UPDATE TO t DO ALSO (NOTIFY a; NOTIFY b);
INSERT INTO t SELECT 4, $q$;$q$;
-- the end; with a comment
"""


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_statements_do_not_depend_on_where_the_scanner_chunks_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """The scanner reads the file a chunk at a time (split.py): every chunk size finds
    the same statements at the same places as reading it whole."""
    (tmp_path / "001_x.sql").write_text(TRICKY)
    (m,) = files.load(tmp_path)
    (whole,) = statements.plan([m])
    monkeypatch.setattr(split, "_CHUNK", chunk)
    (chunked,) = statements.plan([m])
    assert [(s.offset, s.sql) for s in chunked.statements] == \
        [(s.offset, s.sql) for s in whole.statements]
    assert len(whole.statements) == 6
    assert whole.statements[1].sql == "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN " \
                                      "ATOMIC SELECT 1; SELECT 2; END"
    assert statements.line_col(m.text, whole.statements[3].offset) == (5, 31)


def test_a_failure_past_a_sync_names_its_line_and_leaves_nothing(
        db: Db, tmp_path: Path) -> None:
    """Past 4 MiB of SQL a transactional file's pipeline syncs (apply.py IN_FLIGHT): a
    statement failing after that is still named, and the whole file rolled back."""
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "001_seed.sql"
    seed(path, 6 * MIB)
    with path.open("a") as f:
        f.write("INSERT INTO code VALUES (1, 'DCM', 'again');\n")
    line = path.read_text().count("\n")
    code, _, stderr = peak_rss(db.url, folder, tmp_path, "migrate")
    assert code == 1, stderr
    failed = next(e for e in parse_events(stderr) if e.get("event") == "migration_failed")
    assert (failed["sqlstate"], failed["line"], failed["column"]) == ("23505", line, 1)
    assert not db.table_exists("code")
