"""Reading the migrations folder as sqlx reads it (SPEC §8), for the sqlx history format.

The app embeds the folder with `sqlx::migrate!`, which resolves it with sqlx-core's
`resolve_blocking_with_config` (src/migrate/source.rs): every file whose name splits at
its first `_` into an i64 and a rest ending in `.sql`; the type from the rest's suffix
(`.up.sql`, `.down.sql`, else simple; migration_type.rs); the description is the rest
without that suffix (Rust's `trim_end_matches`, so repeated) with every `_` a space; the
checksum is SHA-384 of the file as read; `no_tx` when the text starts with
`-- no-transaction`. sqlx sends a file as one query string (sqlx-postgres migrate.rs).

So that the app and the runner run every file the same way, files sqlx would read or run
differently from the runner are problems here, each with its fix.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

from runner.folder import files, statements
from runner.folder.files import Folder, Migration

DIRECTIVE = "-- no-transaction"
# The advice in sqlx's spelling: its directive honoured only as the file's first bytes,
# its .up.sql / .down.sql layout.
SPELLING = statements.Spelling(
    "; move it to its own file that starts with `-- no-transaction` (its very first bytes: "
    "sqlx honours no other form)",
    "make `-- no-transaction` the file's very first bytes instead (sqlx honours no other "
    "form)",
    "split the file: the part above it into NNN_name.up.sql, the part below into "
    "NNN_name.down.sql")
UP, DOWN, SIMPLE = ".up.sql", ".down.sql", ".sql"
_I64 = re.compile(r"[+-]?[0-9]+")  # what Rust's i64::from_str accepts
_I64_RANGE = range(-(2**63), 2**63)
_BOM = b"\xef\xbb\xbf"


def checksum(data: bytes) -> str:
    """SHA-384 (hex) of the file's exact bytes: no BOM or CRLF normalisation (sqlx-core
    migration.rs `checksum`, with sqlx.toml's ignored-chars unset)."""
    return hashlib.sha384(data).hexdigest()


def eol_checksums(text: str) -> set[str]:
    """The checksums of `text` with LF or CRLF line endings, with and without a BOM: a
    stored checksum among them is a checkout with other line endings, not an edit."""
    lf = text.removeprefix(files.BOM).replace("\r\n", "\n")
    bodies = (lf, lf.replace("\n", "\r\n"))
    return {checksum((bom + body).encode()) for body in bodies for bom in ("", files.BOM)}


def kind_of(rest: str) -> str:
    """sqlx's MigrationType::from_filename, as the suffix."""
    return UP if rest.endswith(UP) else DOWN if rest.endswith(DOWN) else SIMPLE


def description(rest: str) -> str:
    """The name after its first `_`, suffix trimmed as Rust's trim_end_matches does (every
    trailing repetition), `_` turned into spaces."""
    suffix = kind_of(rest)
    while rest.endswith(suffix):
        rest = rest[: -len(suffix)]
    return rest.replace("_", " ")


def _read(read: files.Read, problems: list[str]) -> tuple[bytes, str] | None:
    path, data = read.path, read.data
    if data is None:
        problems.append(f"{path.name}: cannot be read: {read.error and read.error.strerror}")
        return None
    try:
        text = files.decode(path, data)
    except ValueError as exc:
        problems.append(str(exc))
        return None
    if data.startswith(_BOM):
        problems.append(f"{path.name}: starts with a UTF-8 BOM, which sqlx sends to the server "
                        "and the server rejects; save the file as UTF-8 without a BOM")
        return None
    return data, text


def read_folder(folder: Path) -> Folder:
    """Every forward file (simple or `.up.sql`) with its `.down.sql`, and every problem."""
    problems: list[str] = []
    forward: dict[int, list[tuple[str, files.Read, str]]] = defaultdict(list)
    downs: dict[int, list[tuple[str, files.Read]]] = defaultdict(list)
    # Dot names are a mounted ConfigMap's `..data` (sqlx skips them as directories). Every
    # file read once, forward and down alike (SPEC §10.4).
    for entry in files.read_sql_files(folder):
        name = entry.name
        version_text, underscore, rest = name.partition("_")
        if not underscore:
            problems.append(f"{name}: sqlx ignores a file without `_` after its version; "
                            "name it <version>_<description>.sql, or move it out of the folder")
            continue
        if not _I64.fullmatch(version_text) or int(version_text) not in _I64_RANGE:
            problems.append(f"{name}: sqlx cannot read {version_text!r} as a version (a 64-bit "
                            "integer before the first `_`), so the app fails to build; "
                            "rename it <version>_<description>.sql")
            continue
        version = int(version_text)
        if name.endswith("_rollback.sql"):
            stem = name[: -len("_rollback.sql")]
            problems.append(f"{name}: sqlx applies it as a second migration of version "
                            f"{version}, not as a rollback; name the pair {stem}.up.sql / "
                            f"{stem}.down.sql")
            continue
        if kind_of(rest) == DOWN:
            downs[version].append((name, entry))
        else:
            forward[version].append((name, entry, rest))

    for table, what in ((forward, "forward files"), (downs, ".down.sql files")):
        for version, found in table.items():
            if len(found) > 1:
                names = ", ".join(item[0] for item in found)
                problems.append(f"version {version} is used by {len(found)} {what}: {names}; "
                                "give each migration its own version (sqlx would apply both "
                                "and fail on the second)")

    versions = set(forward)
    migrations: list[Migration] = []
    for version in sorted(forward):
        name, entry, rest = forward[version][0]
        read = _read(entry, problems)
        del forward[version]  # its bytes: one copy of a large file held, not two
        if read is None:
            continue
        data, text = read
        down = downs.get(version)
        migrations.append(Migration(version, description(rest), name, entry.path, text,
                                    checksum(data), down[0][1].path if down else None,
                                    down[0][1].data if down else None))
    for version, found in downs.items():
        for name, entry in found:
            if version not in versions:
                problems.append(f"{name}: rollback file without its forward file")
            else:
                _read(entry, problems)
    return Folder(migrations, problems)


def _directive_problem(m: Migration) -> str | None:
    """sqlx runs a file outside a transaction exactly when its text starts with
    `-- no-transaction`; the runner's own rule (statements.is_transactional) must agree."""
    sqlx_no_tx = m.text.startswith(DIRECTIVE)
    if sqlx_no_tx != statements.is_transactional(m.text):
        return None
    if sqlx_no_tx:
        return (f"{m.file}:1: starts with `{DIRECTIVE}` followed by more text, which sqlx "
                "reads as its directive; make the first line exactly `-- no-transaction`")
    return (f"{m.file}: a no-transaction directive in a form sqlx ignores (sqlx honours only "
            f"`{DIRECTIVE}` as the file's very first bytes, and would run this file in a "
            "transaction); make `-- no-transaction` its first line, with nothing before it")


def lex(migrations: list[Migration], forward: bool
        ) -> tuple[list[statements.Plan], list[str]]:
    """The runner's lexer, and sqlx's rules on top. A file of comments only, or empty, is
    a no-op, as for sqlx: applied and recorded (`forward`), or run and its row deleted
    (a `.down.sql`: sqlx's `migrate add -r` template is one). Unless it still holds the
    header `new` wrote: then it has just not been written yet."""
    unwritten = files.UNWRITTEN if forward else files.UNWRITTEN_ROLLBACK
    problems: list[str] = []
    bad: set[str] = set()
    for m in migrations:
        if found_here := _directive_problem(m):
            problems.append(found_here)
            bad.add(m.file)
    plans, found = statements.lex(migrations, empty_ok=True, spelling=SPELLING)
    problems += found
    for plan in plans:
        name = plan.migration.file
        if not plan.statements and unwritten in plan.migration.text:
            bad.add(name)
            problems.append(
                f"{name}: still only the header `new` wrote; write its SQL (a file of "
                + ("comments only would be recorded as applied, and its SQL never run once "
                   "written" if forward else "comments only would delete the history row "
                   "and leave the schema")
                + f"), or, to keep it as a deliberate no-op, delete the line `{unwritten}`")
        if plan.wrapped or (not plan.transactional and len(plan.statements) > 1):
            bad.add(name)
        if plan.wrapped:
            problems.append(
                f"{name}: wrapped in its own BEGIN; ... COMMIT;, whose COMMIT ends sqlx's "
                "transaction before sqlx records the file, so the app would apply it without "
                "atomicity; drop the wrapper (the runner and sqlx both run every file in a "
                "transaction)")
        if not plan.transactional and len(plan.statements) > 1:
            problems.append(
                f"{name}: a no-transaction file with {len(plan.statements)} statements; sqlx "
                "sends a file as one query string, which PostgreSQL runs as one implicit "
                "transaction (CREATE INDEX CONCURRENTLY fails there): one statement per "
                "no-transaction file")
    return [p for p in plans if p.migration.file not in bad], problems


def lex_rollbacks(migrations: list[Migration]) -> tuple[list[statements.Plan], list[str]]:
    """The `.down.sql` plans of `migrations`, in order, and every reason not to run one."""
    readable: list[Migration] = []
    problems: list[str] = []
    for m in migrations:
        if m.rollback is None:
            stem = m.name
            fix = (f"write {stem}.down.sql" if m.file.endswith(UP)
                   else f"rename it {stem}.up.sql and write {stem}.down.sql")
            problems.append(f"{m.file}: no rollback file; {fix}, or undo this migration by "
                            "hand")
            continue
        try:
            readable.append(files.read_rollback(m))
        except ValueError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"{m.rollback.name}: cannot be read: {exc.strerror}")
    plans, found = lex(readable, forward=False)
    return plans, problems + found
