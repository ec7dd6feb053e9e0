"""Half-built indexes are named, never recorded as applied (SPEC §10.5).

A concurrent index build stopped part-way leaves an INVALID index (`pg_index.indisvalid`
false); `IF NOT EXISTS` then skips it on the next run. The runner names it with its fix
when the file fails, refuses to record the file as applied while it remains, and
`verify` reports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Db, Runner, run, wait_until

Files = Callable[[dict[str, str | bytes]], Path]

INDEX = "annotation.uq_study_notes_uid"
DROP = f"DROP INDEX CONCURRENTLY {INDEX};"
FILES: dict[str, str | bytes] = {
    "001_notes.sql": "CREATE SCHEMA annotation;\n"
                     "CREATE TABLE annotation.study_notes (id int PRIMARY KEY, uid text);\n"
                     "INSERT INTO annotation.study_notes VALUES (1, 'a'), (2, 'b'), (3, 'a');\n",
    "002_unique_uid.sql": "-- migrate:no-transaction\n"
                          "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_study_notes_uid "
                          "ON annotation.study_notes (uid);\n",
}


def status(db: Db) -> list[tuple[int, str]]:
    return db.query("SELECT version, status FROM migration_history ORDER BY version")


def valid(db: Db, index: str) -> bool | None:
    return db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                     (index,))


def test_the_issue_path_end_to_end(db: Db, migrations: Files) -> None:
    folder = migrations(FILES)
    # Duplicates: the build fails with 23505 and leaves the index INVALID, named.
    first = run(db.url, folder)
    assert first.code == 1
    failed = first.event("migration_failed")
    assert (failed["sqlstate"], failed["file"], failed["line"]) == ("23505", "002_unique_uid.sql",
                                                                   2)
    assert failed["invalid_indexes"] == [INDEX]
    assert DROP in failed["message"] and "repair --failed" in failed["message"]
    assert DROP in first.event("run_failed")["error"]
    assert valid(db, INDEX) is False
    assert status(db) == [(1, "applied"), (2, "failed")]

    # The duplicates removed, repair --failed: IF NOT EXISTS skips the invalid index, and
    # the file is a failure naming it, never `applied`.
    db.execute("DELETE FROM annotation.study_notes WHERE id = 3")
    assert run(db.url, folder, "repair", "--failed").code == 0
    second = run(db.url, folder)
    assert second.code == 1
    assert "migration_applied" not in [e["event"] for e in second.events
                                       if e.get("version") == 2]
    refused = second.event("migration_failed")
    assert refused["invalid_indexes"] == [INDEX]
    assert (refused["file"], refused["line"], refused["column"]) == ("002_unique_uid.sql", 2, 1)
    assert DROP in refused["message"]
    assert status(db) == [(1, "applied"), (2, "failed")]

    # The fix as given: the index dropped, repair --failed, migrate: applied and valid.
    db.execute(DROP)
    assert run(db.url, folder, "repair", "--failed").code == 0
    third = run(db.url, folder)
    assert third.code == 0, third.stderr
    assert third.event("migration_applied")["version"] == 2
    assert valid(db, INDEX) is True
    assert status(db) == [(1, "applied"), (2, "applied")]


def test_a_cancelled_reindex_concurrently_names_its_ccnew_index(
        db: Db, migrations: Files) -> None:
    """REINDEX INDEX CONCURRENTLY builds `<name>_ccnew` first, then waits for the
    transactions writing the table; cancelled there, it leaves that index INVALID."""
    folder = migrations({
        "001_t.sql": "CREATE TABLE t (id int PRIMARY KEY, v int);\n"
                     "CREATE INDEX t_v ON t (v);\n",
        "002_rebuild.sql": "-- migrate:no-transaction\nREINDEX INDEX CONCURRENTLY t_v;\n",
    })
    assert run(db.url, folder, "--to", "1").code == 0
    with db.connect() as writer:
        writer.execute("BEGIN")
        writer.execute("INSERT INTO t VALUES (1, 1)")  # holds its lock until it ends
        runner = Runner(db.url, folder)
        wait_until(lambda: bool(db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'REINDEX%%' "
            "AND wait_event_type = 'Lock'")), what="the REINDEX waiting for the writer")
        assert db.scalar("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                         "WHERE query LIKE 'REINDEX%%'")
        result = runner.finish()
        writer.execute("ROLLBACK")
    assert result.code == 1
    failed = result.event("migration_failed")
    assert failed["sqlstate"] == "57014"
    assert failed["invalid_indexes"] == ["public.t_v_ccnew"]
    assert "DROP INDEX CONCURRENTLY public.t_v_ccnew;" in failed["message"]
    assert valid(db, "t_v_ccnew") is False


def test_verify_reports_invalid_indexes(db: Db, migrations: Files, tmp_path: Path) -> None:
    folder = migrations(FILES)
    assert run(db.url, folder).code == 1
    result = run(db.url, folder, "verify", "--report-schema", "annotation")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["invalid_indexes"] == [INDEX]
    index = report["schemas"]["annotation"]["tables"]["study_notes"]["indexes"]
    assert index["uq_study_notes_uid"].endswith("-- INVALID")
    warning = result.event("invalid_indexes")
    assert warning["indexes"] == [INDEX] and DROP in warning["message"]
