"""`draft-rollback VERSION` (issue 14) against a real PostgreSQL.

The round trip: dump the schema, apply the forward file with `migrate`, write its draft with
`draft-rollback`, run the draft with `rollback`, dump again: the two dumps are identical.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.folder import files
from tests import conftest
from tests.conftest import ROOT, Db, Result
from tests.pg import bindir

Files = Callable[[dict[str, str | bytes]], Path]
PACS = ROOT / "migrations"


def run(url: str | None, folder: Path, *args: str) -> Result:
    """The native format, pinned: the drafts are the subject, and `dump` leaves out that
    format's tables (a folder of .up.sql files would otherwise choose sqlx's)."""
    return conftest.run(url, folder, *args, MIGRATE_HISTORY_FORMAT="native")


def dump(db: Db) -> str:
    """The schema, without the runner's own bookkeeping tables. pg_dump 15.14+ frames its
    output with `\\restrict KEY` / `\\unrestrict KEY`, a new random key each run: left out."""
    out = subprocess.run([str(bindir() / "pg_dump"), "--schema-only", "--no-owner",
                          "-T", "public.migration_history", "-T", "public.migration_audit",
                          "-d", db.url], check=True, capture_output=True, text=True)
    return "".join(line for line in out.stdout.splitlines(keepends=True)
                   if not line.startswith(("\\restrict ", "\\unrestrict ")))


def forward_files(folder: Path) -> list[tuple[int, str]]:
    """(version, file) of each forward file, whatever its layout (`NNN_x.sql`, `.up.sql`)."""
    found = []
    for path in folder.glob("*.sql"):
        parts = files.split_name(path.name)
        if parts and parts[2] in ("", ".up"):
            found.append((int(parts[0]), path.name))
    return sorted(found)


def body(draft: str) -> list[str]:
    """The draft's lines after its header and its squawk-ignore line."""
    rest = draft.partition("then commit it.\n\n")[2]
    if rest.startswith("-- Dropping is the point of a rollback file:"):
        rest = rest.split("\n\n", 1)[1]
    return rest.splitlines()


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def ok(result: Result) -> Result:
    assert result.code == 0, result.stderr
    return result


def round_trip(db: Db, folder: Path, version: int) -> tuple[Result, str]:
    """Apply `version` (everything older is applied), draft its rollback, run it; returns
    the draft command's result and the draft's text. Asserts the schema is back."""
    before = dump(db)
    ok(run(db.url, folder, "migrate", "--to", str(version)))
    drafted = ok(run(None, folder, "draft-rollback", str(version)))
    written = Path(drafted.stdout.strip())
    rolled = run(db.url, folder, "rollback", "--steps", "1")
    assert rolled.code == 0, f"{written.read_text()}\n{rolled.stderr}"
    assert dump(db) == before, written.read_text()
    return drafted, written.read_text()


# --- the PACS migrations ---------------------------------------------------------------------


def test_each_pacs_migration_is_undone_by_its_draft(db: Db, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    pacs = forward_files(PACS)
    assert [v for v, _ in pacs] == [1, 2, 3]
    for _, name in pacs:  # the forward files only: every draft is written fresh
        shutil.copy(PACS / name, folder / name)

    for version, name in pacs:
        before = dump(db)
        ok(run(db.url, folder, "migrate", "--to", str(version)))
        drafted = ok(run(None, folder, "draft-rollback", str(version)))
        written = Path(drafted.stdout.strip())
        assert written.parent == folder and written.exists()
        needs_person = [e for e in drafted.events if e["event"] == "rollback_draft_needs_review"]
        rolled = run(db.url, folder, "rollback", "--steps", "1")
        if needs_person:
            # 002 only inserts rows: its draft is comments naming each INSERT and the DO
            # block, and the runner refuses a rollback file with no statement until a
            # person writes the DELETEs; the schema is untouched either way.
            assert rolled.code == 5, rolled.stderr
            assert written.name in rolled.event("run_failed")["error"]
            assert "no statement" in rolled.event("run_failed")["error"] or \
                "no SQL statement" in rolled.event("run_failed")["error"]
            continue
        assert rolled.code == 0, f"{written.read_text()}\n{rolled.stderr}"
        assert dump(db) == before, f"{name}: draft left the schema changed:\n{written.read_text()}"
        ok(run(db.url, folder, "migrate", "--to", str(version)))  # the next one builds on it


def test_the_seed_draft_names_every_insert_and_the_do_block() -> None:
    result = ok(run(None, PACS, "draft-rollback", "2", "--stdout"))
    warning = result.event("rollback_draft_needs_review")
    text = next(p for v, p in forward_files(PACS) if v == 2)
    source = (PACS / text).read_text().splitlines()
    kinds = [source[line - 1].split()[0] for line in warning["lines"]]
    assert kinds == ["INSERT", "INSERT", "INSERT", "DO"]
    for line, statement in zip(warning["lines"], warning["statements"], strict=True):
        assert f"-- cannot undo automatically: {statement} — write the reverse by hand" \
            in result.stdout.splitlines()
        assert statement.endswith(f"at line {line}")
    assert "DROP" not in result.stdout


# --- every object kind -----------------------------------------------------------------------

BASE = """\
CREATE TABLE items (id bigint PRIMARY KEY, label text);
CREATE TABLE old_stuff (id int);
"""

EVERY_KIND = """\
CREATE SCHEMA "Kind Test";
CREATE TYPE "Kind Test".mood AS ENUM ('sad', 'happy');
CREATE TYPE "Kind Test".pair AS (a int, b text);
CREATE DOMAIN "Kind Test".positive AS int CHECK (VALUE > 0);
CREATE TYPE "Kind Test".span AS RANGE (subtype = int4);
CREATE SEQUENCE "Kind Test".counter;
CREATE TABLE "Kind Test"."Order" (
    id bigint PRIMARY KEY, mood "Kind Test".mood, qty "Kind Test".positive
);
CREATE TABLE "Kind Test".line (id int, order_id bigint REFERENCES "Kind Test"."Order" (id));
ALTER TABLE "Kind Test".line ADD CONSTRAINT line_id_uq UNIQUE (id);
CREATE INDEX line_order_idx ON "Kind Test".line (order_id);
CREATE SEQUENCE "Kind Test".line_seq OWNED BY "Kind Test".line.id;
CREATE FUNCTION "Kind Test".touch() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN RETURN NEW; END$$;
CREATE FUNCTION "Kind Test".add(a int, b int DEFAULT 1, OUT total int)
    LANGUAGE sql AS $$SELECT a + b$$;
CREATE PROCEDURE "Kind Test".noop(INOUT n int) LANGUAGE plpgsql AS $$BEGIN END$$;
-- the function is newer than the table: the trigger must be dropped before the function
CREATE TRIGGER line_touch BEFORE UPDATE ON "Kind Test".line
    FOR EACH ROW EXECUTE FUNCTION "Kind Test".touch();
CREATE TYPE "Kind Test".shade AS ENUM ('light', 'dark');
ALTER TABLE "Kind Test".line ADD COLUMN shade "Kind Test".shade;
CREATE TABLE "Kind Test".late (id int PRIMARY KEY);
-- no name to drop it by, and it refers to a newer table: that table takes it with CASCADE
ALTER TABLE "Kind Test".line ADD FOREIGN KEY (id) REFERENCES "Kind Test".late (id);
CREATE VIEW "Kind Test".orders_v AS SELECT id FROM "Kind Test"."Order";
CREATE MATERIALIZED VIEW "Kind Test".orders_mv AS SELECT id FROM "Kind Test"."Order";
CREATE EXTENSION citext;
ALTER TABLE items ADD COLUMN note citext, ADD COLUMN mood "Kind Test".mood,
    ADD CONSTRAINT items_label_ck CHECK (label <> '');
CREATE INDEX items_label_idx ON items (label);
CREATE TRIGGER items_touch BEFORE UPDATE ON items
    FOR EACH ROW EXECUTE FUNCTION "Kind Test".touch();
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
CREATE POLICY items_all ON items USING (true);
CREATE POLICY line_all ON "Kind Test".line USING (true);
CREATE RULE items_keep AS ON DELETE TO items DO INSTEAD NOTHING;
CREATE FUNCTION "Kind Test".ddl_hook() RETURNS event_trigger LANGUAGE plpgsql
    AS $$BEGIN END$$;
CREATE EVENT TRIGGER kind_test_ddl ON ddl_command_start
    EXECUTE FUNCTION "Kind Test".ddl_hook();
COMMENT ON TABLE "Kind Test".line IS 'lines';
COMMENT ON COLUMN "Kind Test".line.shade IS 'shade';
GRANT SELECT ON "Kind Test".line, "Kind Test".orders_v TO PUBLIC;
INSERT INTO "Kind Test"."Order" VALUES (1, 'happy', 2);
CREATE TABLE scratch (id int);
DROP TABLE scratch;
"""



def test_every_object_kind_is_dropped_in_reverse_order(db: Db, migrations: Files) -> None:
    folder = migrations({"1_base.sql": BASE, "1_base_rollback.sql": "SELECT 1;",
                         "2_every_kind.sql": EVERY_KIND})
    ok(run(db.url, folder, "migrate", "--to", "1"))
    before = dump(db)
    ok(run(db.url, folder, "migrate"))
    drafted = ok(run(None, folder, "draft-rollback", "2"))
    draft = (folder / "2_every_kind_rollback.sql").read_text()
    assert drafted.stdout.strip() == str(folder / "2_every_kind_rollback.sql")
    drops = [line for line in draft.splitlines() if line and not line.startswith("--")]
    assert drops == [
        'DROP EVENT TRIGGER kind_test_ddl;',
        'DROP FUNCTION "Kind Test".ddl_hook ();',
        'DROP RULE items_keep ON items;',
        'DROP POLICY items_all ON items;',
        'DROP TRIGGER items_touch ON items;',
        'DROP INDEX items_label_idx;',
        'ALTER TABLE items DROP CONSTRAINT items_label_ck;',
        'ALTER TABLE items DROP COLUMN mood;',
        'ALTER TABLE items DROP COLUMN note;',
        'DROP EXTENSION citext;',
        'DROP MATERIALIZED VIEW "Kind Test".orders_mv;',
        'DROP VIEW "Kind Test".orders_v;',
        'DROP TABLE "Kind Test".late CASCADE;',
        'ALTER TABLE "Kind Test".line DROP COLUMN shade;',
        'DROP TYPE "Kind Test".shade;',
        'DROP TRIGGER line_touch ON "Kind Test".line;',
        'DROP PROCEDURE "Kind Test".noop (INOUT integer);',
        'DROP FUNCTION "Kind Test".add (integer, integer);',
        'DROP FUNCTION "Kind Test".touch ();',
        'DROP TABLE "Kind Test".line;',
        'DROP TABLE "Kind Test"."Order";',
        'DROP SEQUENCE "Kind Test".counter;',
        'DROP TYPE "Kind Test".span;',
        'DROP DOMAIN "Kind Test".positive;',
        'DROP TYPE "Kind Test".pair;',
        'DROP TYPE "Kind Test".mood;',
        'DROP SCHEMA "Kind Test";',
    ]
    assert draft.count("CASCADE") == 2  # the statement and the comment saying why
    unnamed_fk = line_of(EVERY_KIND, "ALTER TABLE \"Kind Test\".line ADD FOREIGN KEY")
    assert f"-- CASCADE: ALTER TABLE … ADD CONSTRAINT at line {unnamed_fk} depends on it" in draft
    # ENABLE ROW LEVEL SECURITY cannot be undone blindly (it may have been on already).
    rls = line_of(EVERY_KIND, "ALTER TABLE items ENABLE ROW LEVEL SECURITY")
    assert drafted.event("rollback_draft_needs_review")["lines"] == [rls]
    assert (f"-- cannot undo automatically: ALTER TABLE … ENABLE ROW LEVEL SECURITY at line {rls}"
            in draft)
    rolled = run(db.url, folder, "rollback", "--steps", "1")
    assert rolled.code == 0, f"{draft}\n{rolled.stderr}"
    after = dump(db)
    # The one change a draft cannot know how to undo is done by hand, as its comment says:
    assert "ALTER TABLE public.items ENABLE ROW LEVEL SECURITY" in after
    db.execute("ALTER TABLE items DISABLE ROW LEVEL SECURITY")
    assert dump(db) == before


def test_concurrent_index_draft_is_one_no_transaction_statement(db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_base.up.sql": BASE, "1_base.down.sql": "DROP TABLE items, old_stuff;",
        "2_label_idx.up.sql": "-- migrate:no-transaction\n"
                              "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_label_idx\n"
                              "    ON public.items (label);\n",
    })
    ok(run(db.url, folder, "migrate", "--to", "1"))
    drafted, draft = round_trip(db, folder, 2)
    assert Path(drafted.stdout.strip()).name == "2_label_idx.down.sql"  # the sqlx layout
    assert draft.splitlines()[0] == "-- no-transaction"  # sqlx reads only this, at byte 0
    assert [line for line in draft.splitlines() if not line.startswith("--") and line] == [
        "DROP INDEX CONCURRENTLY IF EXISTS public.items_label_idx;"]
    # IF NOT EXISTS is what the guide asks of a no-transaction file: no review needed.
    assert "rollback_draft_needs_review" not in drafted.names()


# --- what a draft cannot undo ----------------------------------------------------------------

DATA_CHANGES = """\
-- 2_reshape.sql
CREATE TABLE audit_log (id int);
UPDATE items
   SET label = upper(label);
ALTER TABLE items ALTER COLUMN label TYPE varchar(100);
CREATE INDEX audit_log_id ON audit_log (id);
INSERT INTO items VALUES (7, 'seven');
CREATE TABLE notes (id int);
DELETE FROM items WHERE id = 1;
ALTER TYPE base_mood ADD VALUE 'meh';
DROP TABLE old_stuff;
DO $$BEGIN PERFORM 1; END$$;
INSERT INTO notes VALUES (1);
ALTER TABLE notes RENAME TO memos;
ALTER TABLE memos RENAME COLUMN id TO memo_id;
ALTER TABLE items RENAME COLUMN label TO title;
"""


def test_data_changes_become_comments_at_their_place(db: Db, migrations: Files) -> None:
    base = BASE + "CREATE TYPE base_mood AS ENUM ('ok');\n"
    folder = migrations({"1_base.sql": base, "2_reshape.sql": DATA_CHANGES})
    result = ok(run(None, folder, "draft-rollback", "2", "--stdout"))
    assert "-- squawk-ignore-file ban-drop-table\n" in result.stdout
    assert body(result.stdout) == [
        "-- cannot undo automatically: ALTER … RENAME at line 16 — write the reverse by hand",
        "-- cannot undo automatically: DO at line 12 — write the reverse by hand",
        "-- cannot undo automatically: DROP TABLE at line 11 — recreate what it dropped by hand",
        "-- cannot undo automatically: ALTER TYPE … ADD VALUE at line 10 — write the reverse by "
        "hand",
        "-- cannot undo automatically: DELETE at line 9 — write the reverse by hand",
        "DROP TABLE memos;",  # renamed at line 14; its column rename goes with it
        "-- cannot undo automatically: INSERT at line 7 — write the reverse by hand",
        "-- cannot undo automatically: ALTER TABLE … ALTER COLUMN TYPE at line 5 — write the "
        "reverse by hand",
        "-- cannot undo automatically: UPDATE at line 3 — write the reverse by hand",
        "DROP TABLE audit_log;",
    ]
    warning = result.event("rollback_draft_needs_review")
    assert warning["level"] == "warning"
    assert warning["lines"] == [3, 5, 7, 9, 10, 11, 12, 16]
    assert warning["statements"][:2] == ["UPDATE at line 3",
                                         "ALTER TABLE … ALTER COLUMN TYPE at line 5"]
    assert not (folder / "2_reshape_rollback.sql").exists()  # --stdout writes nothing


def test_create_table_in_a_comment_or_a_string_is_not_dropped(migrations: Files) -> None:
    folder = migrations({"1_ghosts.sql": """\
BEGIN;
-- CREATE TABLE ghost_line_comment (id int);
/* CREATE TABLE ghost_block /* nested CREATE TABLE ghost_nested (id int); */ (id int); */
CREATE TABLE
    public.
    real_one (note text DEFAULT 'CREATE TABLE ghost_string (id int);');
INSERT INTO real_one VALUES ($q$CREATE TABLE ghost_dollar (id int);$q$),
                            (E'CREATE TABLE ghost_escape (id int);\\'');
COMMIT;
"""})
    result = ok(run(None, folder, "draft-rollback", "1", "--stdout"))
    drops = [line for line in result.stdout.splitlines() if not line.startswith("--") and line]
    assert drops == ["BEGIN;", "DROP TABLE public.real_one;", "COMMIT;"]
    assert "ghost_" not in result.stdout
    assert "rollback_draft_needs_review" not in result.names()  # rows of its own table


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("forward, rollback", [("3_x.sql", "3_x_rollback.sql"),
                                               ("3_x.up.sql", "3_x.down.sql")])
def test_an_existing_rollback_file_is_never_overwritten(migrations: Files, forward: str,
                                                        rollback: str) -> None:
    folder = migrations({forward: "CREATE TABLE x (id int);\n",
                         rollback: "-- by hand\nDROP TABLE x;\n"})
    before = (folder / rollback).stat()
    result = run(None, folder, "draft-rollback", "3")
    assert result.code == 5
    assert rollback in result.event("run_failed")["error"]
    assert result.stdout == ""
    assert (folder / rollback).read_text() == "-- by hand\nDROP TABLE x;\n"
    assert (folder / rollback).stat().st_mtime_ns == before.st_mtime_ns
    # --stdout still prints the draft, to compare with the file by hand.
    printed = ok(run(None, folder, "draft-rollback", "3", "--stdout"))
    assert "DROP TABLE x;" in printed.stdout


def test_unknown_version_and_bad_forward_file_exit_5(migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);\n",
                         "2_bad.sql": "CREATE TABLE b (id int;\n"})
    missing = run(None, folder, "draft-rollback", "9")
    assert missing.code == 5 and "no forward file with version 9" in missing.stderr
    bad = run(None, folder, "draft-rollback", "2")
    assert bad.code == 5 and "2_bad.sql:1:" in bad.event("run_failed")["error"]
    assert sorted(p.name for p in folder.iterdir()) == ["1_a.sql", "2_bad.sql"]


def test_objects_that_may_predate_the_file_are_dropped_with_a_review_note(
        migrations: Files) -> None:
    folder = migrations({"5_maybe.sql": """\
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TABLE IF NOT EXISTS settings (k text);
CREATE OR REPLACE FUNCTION answer() RETURNS int LANGUAGE sql AS $$SELECT 42$$;
CREATE SCHEMA reports
    CREATE TABLE daily (day date)
    CREATE VIEW latest AS SELECT max(day) FROM daily;
"""})
    result = ok(run(None, folder, "draft-rollback", "5", "--stdout"))
    assert ("-- squawk-ignore-file ban-drop-extension, ban-drop-function, ban-drop-schema, "
            "ban-drop-table, ban-drop-view\n") in result.stdout
    assert body(result.stdout) == [
        "DROP VIEW reports.latest;",
        "DROP TABLE reports.daily;",
        "DROP SCHEMA reports;",
        "-- review: CREATE FUNCTION at line 3 used OR REPLACE: if it replaced an older "
        "definition, restore that instead",
        "DROP FUNCTION answer ();",
        "-- review: CREATE TABLE at line 2 used IF NOT EXISTS: drop it only if this migration "
        "created it",
        "DROP TABLE settings;",
        "-- review: CREATE EXTENSION at line 1 used IF NOT EXISTS: drop it only if this "
        "migration created it",
        "DROP EXTENSION pgcrypto;",
    ]
    warning = result.event("rollback_draft_needs_review")
    assert warning["lines"] == [1, 2, 3]
    assert warning["statements"] == ["CREATE EXTENSION at line 1", "CREATE TABLE at line 2",
                                     "CREATE FUNCTION at line 3"]


def test_draft_rollback_has_help() -> None:
    result = ok(run(None, None, "draft-rollback", "--help"))
    assert "usage: migration-runner draft-rollback" in result.stdout
    assert "--stdout" in result.stdout


def test_unnamed_parts_go_with_their_new_table_and_are_named_on_an_old_one(
        migrations: Files) -> None:
    folder = migrations({"1_base.sql": BASE, "2_parts.sql": """\
CREATE TABLE fresh (id int PRIMARY KEY);
CREATE INDEX ON items (label);
ALTER TABLE items ADD CHECK (id > 0);
CREATE INDEX ON fresh (id);
ALTER TABLE fresh ADD CHECK (id > 0), ADD FOREIGN KEY (id) REFERENCES items (id);
"""})
    result = ok(run(None, folder, "draft-rollback", "2", "--stdout"))
    assert body(result.stdout) == [
        "-- cannot undo automatically: ALTER TABLE … ADD CONSTRAINT without a name at line 3 "
        "— name the constraint in the forward file, or write the reverse by hand",
        "-- cannot undo automatically: CREATE INDEX without a name at line 2 — name the index "
        "in the forward file, or write the DROP by hand",
        "DROP TABLE fresh;",
    ]
    assert result.event("rollback_draft_needs_review")["lines"] == [2, 3]


@pytest.mark.parametrize("existing", [{"1_a.sql": "SELECT 1;\n", "1_a_rollback.sql": "SELECT 1;\n"},
                                      {"1_a.up.sql": "SELECT 1;\n", "1_a.down.sql": "SELECT 1;\n"}])
@pytest.mark.parametrize("no_transaction", [False, True])
def test_the_guides_order_new_then_draft_replaces_the_untouched_stub(
        db: Db, migrations: Files, existing: dict[str, str | bytes],
        no_transaction: bool) -> None:
    """`new`, write the forward file, `draft-rollback`: the stub `new` wrote gives way to
    the draft; a stub someone edited, even by one character, does not."""
    folder = migrations(existing)
    flags = ["--no-transaction"] if no_transaction else []
    forward, rollback = (Path(p) for p in ok(run(None, folder, "new", *flags, "x")).stdout.split())
    sql = ("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON t (id);\n" if no_transaction
           else "CREATE TABLE t2 (id int);\n")
    forward.write_text(forward.read_text() + sql)
    stub = rollback.read_text()

    touched = stub.replace("TODO: say what is lost", "TODO: say what is lost!")
    rollback.write_text(touched)
    refused = run(None, folder, "draft-rollback", "2")
    assert refused.code == 5 and rollback.name in refused.event("run_failed")["error"]
    assert rollback.read_text() == touched

    rollback.write_text(stub)
    drafted = ok(run(None, folder, "draft-rollback", "2"))
    assert drafted.stdout.split() == [str(rollback)]
    assert drafted.event("rollback_drafted")["replaced_stub"] is True
    text = rollback.read_text()
    assert ("DROP INDEX CONCURRENTLY IF EXISTS ix;" if no_transaction
            else "DROP TABLE t2;") in text, text
    assert "Drafted by `migration-runner draft-rollback 2`" in text
    # The pair runs: forward, the drafted rollback, forward again.
    db.execute("CREATE TABLE t (id int)")
    for command in (["migrate"], ["rollback", "--steps", "1"], ["migrate"]):
        ok(run(db.url, folder, *command))
