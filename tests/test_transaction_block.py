"""Statements a migration file may not contain because of how the runner runs it
(runner/transaction_block.py, SPEC §2): one example per entry of the table derived from
PostgreSQL's source, refused at validation naming file and line, and checked against the
real server the tests start."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from runner.errors import ValidationError
from runner.folder import files, statements, transaction_block
from tests.conftest import Db, run

Files = Callable[[dict[str, str | bytes]], Path]

# (entry name, a statement it refuses); every entry of IN_TRANSACTION_BLOCK has one.
IN_TRANSACTION = [
    ("CREATE DATABASE", "CREATE DATABASE other"),
    ("DROP DATABASE", "DROP DATABASE other"),
    ("CREATE TABLESPACE", "CREATE TABLESPACE space LOCATION '/nonexistent'"),
    ("DROP TABLESPACE", "DROP TABLESPACE space"),
    ("ALTER SYSTEM", "ALTER SYSTEM SET work_mem = '1MB'"),
    ("CREATE INDEX CONCURRENTLY", "CREATE INDEX CONCURRENTLY t_id ON t (id)"),
    ("DROP INDEX CONCURRENTLY", "DROP INDEX CONCURRENTLY t_id"),
    ("ALTER TABLE ... DETACH CONCURRENTLY", "ALTER TABLE t DETACH PARTITION t_1 CONCURRENTLY"),
    ("REINDEX CONCURRENTLY", "REINDEX TABLE CONCURRENTLY t"),
    ("REINDEX SCHEMA", "REINDEX SCHEMA public"),
    ("REINDEX SYSTEM", "REINDEX SYSTEM other"),
    ("REINDEX DATABASE", "REINDEX DATABASE other"),
    ("CLUSTER", "CLUSTER"),
    ("VACUUM", "VACUUM (ANALYZE) t"),
    ("DISCARD ALL", "DISCARD ALL"),
    ("ALTER DATABASE SET TABLESPACE", "ALTER DATABASE other SET TABLESPACE pg_default"),
    ("CREATE SUBSCRIPTION ... WITH (create_slot = true)",
     "CREATE SUBSCRIPTION sub2 CONNECTION 'dbname=nowhere' PUBLICATION pub"),
    ("DROP SUBSCRIPTION", "DROP SUBSCRIPTION sub"),
    ("ALTER SUBSCRIPTION ... REFRESH", "ALTER SUBSCRIPTION sub REFRESH PUBLICATION"),
    ("ALTER SUBSCRIPTION with refresh", "ALTER SUBSCRIPTION sub SET PUBLICATION pub"),
    ("ALTER SUBSCRIPTION with refresh", "ALTER SUBSCRIPTION sub ADD PUBLICATION pub3"),
    ("ALTER SUBSCRIPTION with refresh", "ALTER SUBSCRIPTION sub DROP PUBLICATION pub2"),
    ("ALTER SUBSCRIPTION ... SET (failover)", "ALTER SUBSCRIPTION sub SET (failover = true)"),
    ("ALTER SUBSCRIPTION ... SET (two_phase)",
     "ALTER SUBSCRIPTION sub SET (two_phase = false)"),
]
IDS = [sql for _, sql in IN_TRANSACTION]

# Variants the same entries let through: options, or forms that stay in one transaction.
ALLOWED_IN_TRANSACTION = [
    "REINDEX TABLE t", "REINDEX (CONCURRENTLY false) TABLE t", "REINDEX INDEX t_id",
    "CLUSTER t USING t_id", "ANALYZE t", "DISCARD TEMP", "DISCARD PLANS",
    "ALTER DATABASE other SET work_mem = '1MB'", "CREATE INDEX t_id2 ON t (id)",
    "DROP INDEX t_id2", "ALTER TABLE t DETACH PARTITION t_1",
    "ALTER TABLE t DETACH PARTITION t_1 FINALIZE",
    "CREATE SUBSCRIPTION s CONNECTION 'dbname=x' PUBLICATION p WITH (connect = false)",
    "CREATE SUBSCRIPTION s CONNECTION 'dbname=x' PUBLICATION p WITH (create_slot = off, "
    "enabled = false, slot_name = NONE)",
    "ALTER SUBSCRIPTION s SET (slot_name = NONE); DROP SUBSCRIPTION s",
    "ALTER SUBSCRIPTION s SET PUBLICATION p WITH (refresh = false)",
    "ALTER SUBSCRIPTION s ADD PUBLICATION p WITH (refresh = 0)",
    "ALTER SUBSCRIPTION s SET (two_phase = true)", "ALTER SUBSCRIPTION s DISABLE",
    "LOCK TABLE t", "DECLARE c CURSOR FOR SELECT 1", "COPY t FROM '/tmp/t.csv'",
    "COPY t TO PROGRAM 'cat'",
]

OUTSIDE_TRANSACTION = [("LOCK TABLE", "LOCK TABLE t IN SHARE MODE"),
                       ("DECLARE CURSOR", "DECLARE c CURSOR FOR SELECT 1")]


def problems(tmp_path: Path, content: dict[str, str]) -> list[str]:
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    for name, text in content.items():
        (folder / name).write_text(text)
    try:
        statements.plan(files.load(folder))
    except ValidationError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(("name", "sql"), IN_TRANSACTION, ids=IDS)
def test_refused_in_a_transactional_file_naming_file_and_line(
        tmp_path: Path, name: str, sql: str) -> None:
    found = problems(tmp_path, {"001_x.sql": f"-- header\nBEGIN;\nSELECT 1;\n{sql};\nCOMMIT;\n"})
    assert len(found) == 1, found
    assert found[0].startswith(f"001_x.sql:4:1: {name} cannot run inside a transaction block")
    assert "-- migrate:no-transaction" in found[0]
    # ...and where it belongs, in a no-transaction file, it is fine.
    assert problems(tmp_path, {"001_x.sql": f"-- migrate:no-transaction\n{sql};\n"}) == []


def test_every_entry_of_the_derived_table_has_an_example() -> None:
    from pglast.parser import parse_sql_json

    hit = set()
    for _, sql in IN_TRANSACTION:
        node = next(iter(json.loads(parse_sql_json(sql))["stmts"][0]["stmt"].items()))
        refusal = transaction_block.refused_in_transaction(node, transaction_block.Subscriptions())
        assert refusal is not None, sql
        hit.add(id(refusal))
    assert hit == {id(r) for r in transaction_block.IN_TRANSACTION_BLOCK}


@pytest.mark.parametrize("sql", ALLOWED_IN_TRANSACTION)
def test_what_postgresql_allows_in_a_transaction_is_not_refused(
        tmp_path: Path, sql: str) -> None:
    if sql.startswith(("LOCK", "DECLARE")):  # only inside a transaction, which this is
        assert problems(tmp_path, {"001_x.sql": f"{sql};\n"}) == []
    else:
        assert problems(tmp_path, {"001_x.sql": f"BEGIN;\n{sql};\nCOMMIT;\n"}) == []


@pytest.mark.parametrize(("name", "sql"), OUTSIDE_TRANSACTION)
def test_refused_in_a_no_transaction_file(tmp_path: Path, name: str, sql: str) -> None:
    found = problems(tmp_path, {"001_x.sql": f"-- migrate:no-transaction\n\n{sql};\n"})
    assert found == [f"001_x.sql:3:1: {name} can only run inside a transaction block, and a "
                     "no-transaction file runs each statement on its own; move it to a "
                     "transactional file"]


def test_validate_offline_exits_5_naming_every_refused_statement(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    for i, (_, sql) in enumerate(IN_TRANSACTION, start=1):
        (folder / f"{i:03}_x.sql").write_text(f"SELECT 1;\n{sql};\n")
    result = run(None, folder, "validate", "--offline")
    assert result.code == 5, result.stderr
    found = "\n".join(result.events[-1]["problems"])
    for i, (name, _) in enumerate(IN_TRANSACTION, start=1):
        assert f"{i:03}_x.sql:2:1: {name} cannot run inside a transaction block" in found


# --- the table against the server the tests run ---------------------------------------

def _applies(versions: str, major: int) -> bool:
    low, _, high = versions.partition("-")
    return int(low) <= major <= int(high or low)


@pytest.fixture
def subscription(db: Db) -> Iterator[Db]:
    """`sub`: enabled, with a slot name and publications pub and pub2, never connected
    (its worker fails to reach `nowhere` and retries, which nothing here waits for)."""
    db.execute("CREATE TABLE t (id int)")
    db.execute("CREATE SUBSCRIPTION sub CONNECTION 'dbname=nowhere' PUBLICATION pub, pub2 "
               "WITH (connect = false)")
    db.execute("ALTER SUBSCRIPTION sub ENABLE")
    yield db
    db.execute("ALTER SUBSCRIPTION sub DISABLE")
    db.execute("ALTER SUBSCRIPTION sub SET (slot_name = NONE)")
    db.execute("DROP SUBSCRIPTION sub")


def test_the_server_refuses_each_entry_in_a_transaction_block(subscription: Db) -> None:
    """Every entry that applies to the server's major version gets 25001 from it."""
    db = subscription
    major = int(db.scalar("SHOW server_version_num")) // 10000
    checked = []
    for name, sql in IN_TRANSACTION:
        entry = next(r for r in transaction_block.IN_TRANSACTION_BLOCK if r.name == name)
        if not _applies(entry.versions, major):
            continue
        # The failover and two_phase options are refused for an enabled subscription
        # before the transaction-block check (CheckAlterSubOption, 18).
        disable = "(failover" in sql or "(two_phase" in sql
        if disable:
            db.execute("ALTER SUBSCRIPTION sub DISABLE")
        with (db.connect() as conn,
              pytest.raises(psycopg.errors.ActiveSqlTransaction, match="transaction block"),
              conn.transaction()):
            conn.execute(sql)
        if disable:
            db.execute("ALTER SUBSCRIPTION sub ENABLE")
        checked.append(sql)
    assert len(checked) >= 17, checked  # PostgreSQL 13 has the fewest entries


def test_the_server_refuses_each_outside_entry_in_autocommit(db: Db) -> None:
    db.execute("CREATE TABLE t (id int)")
    for _, sql in OUTSIDE_TRANSACTION:
        with db.connect() as conn, pytest.raises(psycopg.errors.NoActiveSqlTransaction):
            conn.execute(sql)


# --- the reported instances, end to end ------------------------------------------------

def user_tables(db: Db) -> set[str]:
    rows = db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows} - {"migration_history", "migration_audit"}


def applied(db: Db) -> list[int]:
    if not db.table_exists("migration_history"):
        return []
    return [r[0] for r in db.query("SELECT version FROM migration_history ORDER BY 1")]


def test_reindex_schema_in_transactional_file_exits_5_before_anything_is_applied(
        db: Db, migrations: Files) -> None:
    """Reported: validation passed, `migrate` applied 001 and 002, then failed 25001."""
    folder = migrations({
        "001_item.sql": "CREATE TABLE item (id int, label text);\n",
        "002_seed.sql": "INSERT INTO item VALUES (1, 'a');\n",
        "003_reindex.sql": "-- purpose: index labels\nBEGIN;\n"
                           "CREATE INDEX item_label_idx ON item (label);\n"
                           "REINDEX SCHEMA public;\nCOMMIT;\n",
    })
    offline = run(None, folder, "validate", "--offline")
    assert offline.code == 5, offline.stderr
    result = run(db.url, folder, "migrate")
    assert result.code == 5, result.stderr
    for outcome in (offline, result):
        assert any(p.startswith("003_reindex.sql:4:1: REINDEX SCHEMA cannot run inside a "
                                "transaction block") for p in outcome.events[-1]["problems"])
    assert user_tables(db) == set() and applied(db) == []
    assert "migration_started" not in result.names()


@pytest.mark.parametrize("copy", ["COPY item (id, label) FROM stdin WITH (FORMAT csv);\n1,a\n\\.\n",
                                  "COPY item (id, label) FROM stdin WITH (FORMAT csv);\n",
                                  "COPY (SELECT * FROM item) TO STDOUT;\n"])
def test_copy_with_a_client_stream_exits_5_at_validation(
        db: Db, migrations: Files, copy: str) -> None:
    """Reported: COPY FROM stdin passed validation and broke the pipeline (sqlstate null,
    rollback_failed, no audit row)."""
    folder = migrations({"001_item.sql": "CREATE TABLE item (id int, label text);\n",
                         "002_load.sql": "-- purpose: load\n" + copy})
    offline = run(None, folder, "validate", "--offline")
    result = run(db.url, folder, "migrate")
    for outcome in (offline, result):
        assert outcome.code == 5, outcome.stderr
        text = "\n".join(outcome.events[-1]["problems"])
        assert "002_load.sql:2:1: COPY ... " in text
        assert "needs a client feeding or reading the data" in text
        assert "use INSERT ... VALUES, or COPY from a file on the database server" in text
    assert user_tables(db) == set() and applied(db) == []


def test_dbmate_style_file_exits_5_and_its_down_section_never_runs(
        db: Db, migrations: Files) -> None:
    """Reported: both halves ran, exit 0, the table was gone."""
    folder = migrations({"001_item.sql": "CREATE TABLE item (id int);\n"})
    assert run(db.url, folder, "migrate").code == 0
    migrations({"002_note.sql": "-- migrate:up\nCREATE TABLE note (id int);\n\n"
                                "-- migrate:down\nDROP TABLE item;\n"})
    result = run(db.url, folder, "migrate")
    assert result.code == 5, result.stderr
    (problem,) = result.events[-1]["problems"]
    assert problem.startswith("002_note.sql:4:1: `-- migrate:down` is a dbmate directive")
    assert "NNN_name.up.sql" in problem and "NNN_name.down.sql" in problem
    assert user_tables(db) == {"item"} and applied(db) == [1]


# --- COMMIT / ROLLBACK inside PL/pgSQL ------------------------------------------------

BATCH = ("CREATE PROCEDURE batch() LANGUAGE plpgsql AS $$\nBEGIN\n"
         "  INSERT INTO item VALUES (1);\n    COMMIT;\nEND $$;\n")  # COMMIT on line 5:5 below
TRANSACTION_ENDS = {
    "do-commit": ("CREATE TABLE item (id int);\nDO $$\nBEGIN\n  INSERT INTO item VALUES (1);\n"
                  "  COMMIT;\nEND $$;\n", "001_x.sql:5:3: COMMIT inside a DO block"),
    "do-rollback-nested": ("DO LANGUAGE plpgsql $body$\nDECLARE n int := 0;\nBEGIN\n"
                           "  FOR i IN 1..3 LOOP\n    IF i = 2 THEN\n      ROLLBACK;\n"
                           "    END IF;\n  END LOOP;\nEND $body$;\n",
                           "001_x.sql:6:7: ROLLBACK inside a DO block"),
    "do-one-line": ("SELECT 1;\nDO $$BEGIN COMMIT; END$$;\n",
                    "001_x.sql:2:1: COMMIT inside a DO block"),
    "call-procedure-of-this-file": ("CREATE TABLE item (id int);\n" + BATCH + "CALL batch();\n",
                                    "001_x.sql:7:1: CALL batch reaches the COMMIT of procedure "
                                    "batch (001_x.sql:5:5)"),
    "call-through-another-procedure": (
        "CREATE TABLE item (id int);\n" + BATCH
        + "CREATE PROCEDURE outer_p() LANGUAGE plpgsql AS $$ BEGIN CALL batch(); END $$;\n"
          "CALL public.outer_p();\n",
        "001_x.sql:8:1: CALL outer_p reaches the COMMIT of procedure batch (001_x.sql:5:5)"),
    "do-calls-procedure": ("CREATE TABLE item (id int);\n" + BATCH + "DO $$\nBEGIN\n"
                           "  CALL batch();\nEND $$;\n",
                           "001_x.sql:9:3: this DO block calls batch, which reaches the COMMIT "
                           "of procedure batch (001_x.sql:5:5)"),
    "wrapped-crlf-non-ascii": ("-- Größe\r\nBEGIN;\r\nDO $$\r\nBEGIN\r\n  COMMIT;\r\nEND $$;\r\n"
                               "COMMIT;\r\n", "001_x.sql:5:3: COMMIT inside a DO block"),
}
ENDS_ALLOWED = {
    "procedure-not-called": "CREATE TABLE item (id int);\n" + BATCH,
    "function-not-procedure": "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
                              "COMMIT; END $$;\n",
    "replaced-before-call": BATCH + "CREATE OR REPLACE PROCEDURE batch() LANGUAGE plpgsql AS "
                                    "$$ BEGIN NULL; END $$;\nCALL batch();\n",
    "call-of-unknown-procedure": "CALL elsewhere();\n",
    "other-language": "DO LANGUAGE plperl $$ my $x = 'COMMIT;'; $$;\n",
    "commit-in-a-string": "DO $$ BEGIN RAISE NOTICE 'COMMIT;'; END $$;\n",
    "no-transaction-file": "-- migrate:no-transaction\nDO $$ BEGIN COMMIT; END $$;\n" + BATCH
                           + "CALL batch();\n",
}


@pytest.mark.parametrize("case", TRANSACTION_ENDS)
def test_transaction_end_in_plpgsql_is_refused_in_a_transactional_file(
        tmp_path: Path, case: str) -> None:
    text, expected = TRANSACTION_ENDS[case]
    found = problems(tmp_path, {"001_x.sql": text})
    assert len(found) == 1 and found[0].startswith(expected), found
    assert "2D000" in found[0] and "-- migrate:no-transaction" in found[0]


@pytest.mark.parametrize("case", ENDS_ALLOWED)
def test_plpgsql_that_ends_no_transaction_here_is_allowed(tmp_path: Path, case: str) -> None:
    assert problems(tmp_path, {"001_x.sql": ENDS_ALLOWED[case]}) == []


def test_refused_do_block_fails_2d000_in_a_transaction_and_applies_without_one(
        db: Db, migrations: Files) -> None:
    """What the check says, the server does: in a transaction block the COMMIT fails
    2D000; with `-- migrate:no-transaction` the runner applies it."""
    text, _ = TRANSACTION_ENDS["do-commit"]
    with (db.connect() as conn,
          pytest.raises(psycopg.errors.InvalidTransactionTermination),
          conn.transaction()):
        conn.execute(text)
    folder = migrations({"001_x.sql": "-- migrate:no-transaction\n" + text})
    result = run(db.url, folder, "migrate")
    assert result.code == 0, result.stderr
    assert db.scalar("SELECT count(*) FROM item") == 1


PARTITIONED = ("CREATE TABLE reading (id int, taken date) PARTITION BY RANGE (taken);\n"
               "CREATE TABLE reading_2026 PARTITION OF reading\n"
               "    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');\n"
               "CREATE INDEX reading_taken_idx ON reading (taken);\n")


@pytest.mark.parametrize(("sql", "refused"), [
    ("REINDEX TABLE reading", "REINDEX TABLE of the partitioned table reading"),
    ("REINDEX TABLE public.reading", "REINDEX TABLE of the partitioned table public.reading"),
    ("REINDEX INDEX reading_taken_idx",
     "REINDEX INDEX of the partitioned index reading_taken_idx"),
    ("CLUSTER reading USING reading_taken_idx", "CLUSTER of the partitioned table reading"),
])
def test_maintenance_of_a_partitioned_table_the_file_creates_is_refused_naming_the_line(
        db: Db, migrations: Files, sql: str, refused: str) -> None:
    """PostgreSQL refuses these on a partitioned table or index in a transaction block
    (ReindexPartitions, 14+; cluster.c, 15+): at validation, not at run time."""
    folder = migrations({"001_reading.sql": f"{PARTITIONED}{sql};\n"})
    offline = run(None, folder, "validate", "--offline")
    assert offline.code == 5, offline.stderr
    (problem,) = offline.events[-1]["problems"]
    assert problem.startswith(f"001_reading.sql:5:1: {refused} cannot run inside a "
                              "transaction block"), problem
    assert "-- migrate:no-transaction" in problem
    # The server agrees: in a transaction block it refuses the statement with 25001.
    with (db.connect() as conn, pytest.raises(psycopg.errors.ActiveSqlTransaction),
          conn.transaction()):
        conn.execute(PARTITIONED)
        conn.execute(sql)
    # In a no-transaction file of its own, after the table exists, it applies.
    tables = migrations({"001_reading.sql": PARTITIONED,
                         "002_maintain.sql": f"-- migrate:no-transaction\n{sql};\n"})
    result = run(db.url, tables)
    assert result.code == 0, result.stderr


def test_a_plain_table_of_the_same_name_in_another_schema_is_not_refused(
        tmp_path: Path) -> None:
    sql = f"{PARTITIONED}CREATE TABLE other.reading (id int);\nREINDEX TABLE other.reading;\n"
    assert problems(tmp_path, {"001_x.sql": sql}) == []


@pytest.mark.parametrize(("sql", "refused"), [
    ("REINDEX TABLE reading", "REINDEX TABLE of the partitioned table reading"),
    ("REINDEX INDEX reading_taken_idx",
     "REINDEX INDEX of the partitioned index reading_taken_idx"),
    ("CLUSTER reading USING reading_taken_idx", "CLUSTER of the partitioned table reading"),
])
def test_maintenance_of_a_partitioned_table_an_earlier_migration_created_is_refused_first(
        db: Db, migrations: Files, sql: str, refused: str) -> None:
    """Of the pending files, only the catalog knows `reading` is partitioned: refused
    (exit 5) before the first pending file is applied, naming the line."""
    folder = migrations({"001_reading.sql": PARTITIONED})
    assert run(db.url, folder).code == 0
    migrations({"002_plain.sql": "CREATE TABLE plain (id int);\n",
                "003_maintain.sql": f"-- keep it tidy\n{sql};\n"})
    # The folder alone says it too (001 makes it partitioned); so do status --exit-code
    # (5, not 6: migrate would refuse, not apply) and, below, validate and migrate.
    assert run(None, folder, "validate", "--offline").code == 5
    assert run(db.url, folder, "status", "--exit-code").code == 5
    for args in (("validate",), ("migrate", "--dry-run"), ("migrate",)):
        result = run(db.url, folder, *args)
        assert result.code == 5, result.stderr
        (problem,) = result.events[-1]["problems"]
        assert problem.startswith(f"003_maintain.sql:2:1: {refused} cannot run inside a "
                                  "transaction block"), problem
    assert not db.table_exists("plain")
    assert applied(db) == [1]
    # A plain table of that kind is maintained in a transaction as before.
    db.execute("DROP TABLE reading; CREATE TABLE reading (id int, taken date);\n"
               "CREATE INDEX reading_taken_idx ON reading (taken)")
    assert run(db.url, folder).code == 0
    assert applied(db) == [1, 2, 3]


def test_validate_offline_refuses_maintenance_of_a_table_an_earlier_file_partitions(
        tmp_path: Path) -> None:
    """The folder alone says it: 001 creates `reading` PARTITION BY, 002 reindexes it in
    a transaction, which PostgreSQL refuses (25001), whatever the database holds."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001_reading.sql").write_text(PARTITIONED)
    (folder / "002_maintain.sql").write_text("-- keep it tidy\nREINDEX TABLE reading;\n")
    result = run(None, folder, "validate", "--offline")
    assert result.code == 5, result.stderr
    (problem,) = result.events[-1]["problems"]
    assert problem.startswith("002_maintain.sql:2:1: REINDEX TABLE of the partitioned table "
                              "reading cannot run inside a transaction block"), problem
    (folder / "002_maintain.sql").write_text(
        "-- migrate:no-transaction\nREINDEX TABLE reading;\n")
    assert run(None, folder, "validate", "--offline").code == 0


def test_refused_at_run_time_the_error_gives_the_fix_and_says_nothing_committed(
        db: Db, migrations: Files) -> None:
    """A partitioned table the checks cannot see (found through the file's own search
    path): PostgreSQL's 25001 at run time names the statement's place, the same fix as
    validation gives, and that nothing of the file was committed."""
    db.execute("CREATE SCHEMA app")
    folder = migrations({"001_ev.sql":
                         'CREATE TABLE app."Ev" (at date) PARTITION BY RANGE (at);\n'})
    assert run(db.url, folder).code == 0
    migrations({"002_sp.sql": 'CREATE TABLE marker (id int);\nSET search_path TO app;\n'
                              'REINDEX TABLE "Ev";\n'})
    result = run(db.url, folder)
    assert result.code == 1, result.stderr
    error = result.events[-1]["error"]
    assert error.startswith("002_sp.sql:3:1: REINDEX TABLE cannot run inside a transaction "
                            "block (SQLSTATE 25001); move it to its own file whose first "
                            "line is `-- migrate:no-transaction`"), error
    assert error.endswith("; rolled back: nothing of it was committed"), error
    assert not db.table_exists("marker")
    assert applied(db) == [1]


def test_the_catalog_refusal_in_an_sqlx_folder_gives_sqlx_directive_and_following_it_applies(
        db: Db, migrations: Files) -> None:
    """In sqlx's layout the fix names sqlx's directive, the only form it honours; the
    file changed as the message says then validates and applies."""
    folder = migrations({"001_reading.up.sql": PARTITIONED,
                         "001_reading.down.sql": "DROP TABLE reading;\n"})
    assert run(db.url, folder).code == 0
    migrations({"002_maintain.up.sql": "REINDEX TABLE reading;\n",
                "002_maintain.down.sql": "SELECT 1;\n"})
    result = run(db.url, folder, "validate")
    assert result.code == 5, result.stderr
    (problem,) = result.events[-1]["problems"]
    assert problem.startswith("002_maintain.up.sql:1:1: REINDEX TABLE of the partitioned "
                              "table reading cannot run inside a transaction block"), problem
    assert "starts with `-- no-transaction`" in problem, problem
    (folder / "002_maintain.up.sql").write_text("-- no-transaction\nREINDEX TABLE reading;\n")
    assert run(None, folder, "validate", "--offline").code == 0
    assert run(db.url, folder, "validate").code == 0
    assert run(db.url, folder).code == 0
    assert db.scalar("SELECT count(*) FROM _sqlx_migrations") == 2
