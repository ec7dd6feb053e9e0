"""`new DESCRIPTION`: write the next migration and its rollback file (SPEC §4).

The version is one more than the highest in the folder (rollback files count, so a
forward file deleted by mistake is not silently reused), zero-padded to the width the
folder uses, 3 digits in an empty one. The pair follows the folder's layout: sqlx's
`NNN_x.up.sql` / `NNN_x.down.sql` when its newest migration is written so (the app's
`sqlx::migrate!` reads a `_rollback.sql` file as a second migration), else
`NNN_x.sql` / `NNN_x_rollback.sql`. Both files get the header the migration guide asks
for and nothing else: a header-only file fails validation until its SQL is written.
When the folder has a kustomization file, its configMapGenerator list gets both names.
No database needed.

Whether a name is valid is decided by `files.split_name`, the rule `validate` and
`migrate` read the folder with, never by a copy of it here.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.drafting import draft
from runner.errors import ConfigError, ValidationError
from runner.folder import files, kustomization
from runner.output import log
from runner.settings import Settings

DEFAULT_WIDTH = 3
MAX_DESCRIPTION = 200

_FORWARD = """\
{first}-- {forward}
-- Purpose:    {purpose}
--             {unwritten}
-- Depends on: {depends}
-- Rollback:   {rollback}
--
{how}"""
_IN_TRANSACTION = """\
-- Runs in one transaction; the runner sets lock_timeout itself, so no SET here.
-- For CREATE INDEX CONCURRENTLY and friends, make this the first line of the file:
--   {directive}
"""
_OUTSIDE_TRANSACTION = """\
-- Runs outside a transaction (the first line says so; keep it first): only for what a
-- transaction refuses, e.g. CREATE INDEX CONCURRENTLY IF NOT EXISTS. One statement, safe
-- to run again; stopped part-way it leaves a `failed` history row until `repair`.
"""
_ROLLBACK = """\
-- {rollback}
-- Purpose:    undo {forward}.
--             {unwritten_rollback}
-- Depends on: nothing newer applied (the runner rolls back newest first).
-- Rollback:   this is the rollback of {forward}.
"""
# What squawk, the folder's linter, says of a DROP in a rollback file is moot: dropping is
# its point. draft-rollback lists the rules its draft trips; the stub, before any SQL,
# all of them.
_ROLLBACK_STUB = """\
{first}{header}
-- Dropping is the point of a rollback file:
-- squawk-ignore-file {rules}
"""
# (forward suffix, rollback suffix, the no-transaction directive both readers honour)
_PLAIN = (".sql", "_rollback.sql", "-- migrate:no-transaction")
# sqlx honours its directive only as the file's very first bytes
# (sqlx-core src/migrate/source.rs: `sql.starts_with("-- no-transaction")`); the runner
# reads it there too.
_SQLX = (".up.sql", ".down.sql", "-- no-transaction")


def layout_of(forward_file: str) -> tuple[str, str, str]:
    """(forward suffix, rollback suffix, no-transaction directive) of a forward file's
    layout: `.up.sql` pairs with `.down.sql` and sqlx's directive, anything else with
    `_rollback.sql` and the runner's."""
    return _SQLX if forward_file.endswith(".up.sql") else _PLAIN


def rollback_header(forward: str, rollback: str) -> str:
    """The header of a rollback file: the one `new` writes, reused by `draft-rollback`."""
    return _ROLLBACK.format(forward=forward, rollback=rollback,
                            unwritten_rollback=files.UNWRITTEN_ROLLBACK)


def rollback_stub(forward: str, rollback: str, directive: str | None) -> str:
    """The whole rollback file `new` writes: `directive` (or None) as its first line, the
    header, the squawk line. `draft-rollback` replaces a file still exactly this."""
    return _ROLLBACK_STUB.format(first=f"{directive}\n" if directive else "",
                                 header=rollback_header(forward, rollback),
                                 rules=", ".join(draft.SQUAWK_DROP_RULES))


def check_name(version: int, stem: str, description: str,
               suffixes: tuple[str, str, str]) -> None:
    """ConfigError (exit 2) unless both file names of `stem` read back, under the folder
    rules of `files.split_name`, as version and `description`: so `new` never writes a
    file that `validate` or `migrate` would refuse."""
    written = stem.split("_", 1)[0]
    for suffix in suffixes[:2]:
        parts = files.split_name(stem + suffix)
        if parts is None or parts[:2] != (written, description):
            if parts is None and files.split_name(f"1_{description}{suffix}"):
                raise ConfigError(
                    f"new: version {version} cannot stand in a migration file name, which "
                    "takes 1 to 18 digits (at most 999999999999999999); nothing written. "
                    "Pass --number with a free version within that limit")
            raise ConfigError(
                f"new: description {description!r} would not read back from "
                f"{stem + suffix}; use letters, digits, _ and - only, not ending in "
                "_rollback (e.g. add_study_notes)")


def _existing(folder: Path) -> list[tuple[int, str, str, str]]:
    """(version, version as written, kind, file name) of every migration-named file."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise files.unreadable(folder, exc) from None
    found = []
    for name in names:
        parts = files.split_name(name) if not name.startswith(".") else None
        if parts:
            found.append((int(parts[0]), parts[0], parts[2], name))
    return found


def _layout(existing: list[tuple[int, str, str, str]]) -> tuple[str, str, str]:
    """The newest migration's layout, so a folder never mixes the two."""
    newest = max(((v, kind) for v, _, kind, _ in existing if kind in ("", ".up")), default=None)
    return _SQLX if newest and newest[1] == ".up" else _PLAIN


def new(settings: Settings, description: str, number: int | None = None,
        no_transaction: bool = False) -> int:
    """Write the pair; `no_transaction`: both files start with the no-transaction
    directive of the folder's layout (sqlx's `-- no-transaction` at byte 0 for `.up.sql`,
    which is the only place sqlx looks), and the forward header says so."""
    if len(description) > MAX_DESCRIPTION:
        raise ConfigError(f"new: description longer than {MAX_DESCRIPTION} characters")
    folder = settings.migrations_path
    existing = _existing(folder)
    version = number if number is not None else max((v for v, *_ in existing), default=0) + 1
    width = max((len(text) for _, text, _, _ in existing), default=DEFAULT_WIDTH)
    stem = f"{version:0{width}d}_{description}"
    # MIGRATE_HISTORY_FORMAT=sqlx: the app's layout even in an empty folder (SPEC §8).
    suffixes = _SQLX if settings.history_format == "sqlx" else _layout(existing)
    check_name(version, stem, description, suffixes)
    taken = [name for v, _, _, name in existing if v == version]
    if taken:
        raise ValidationError([f"new: version {version} is already used by "
                               f"{', '.join(taken)}; nothing written"])
    forward, rollback = stem + suffixes[0], stem + suffixes[1]
    try:
        listing = kustomization.with_files(folder, [forward, rollback])
    except ValueError as exc:
        raise ValidationError([f"new: {exc}; nothing written"]) from None
    previous = max(((v, name) for v, _, kind, name in existing
                    if v < version and kind in ("", ".up")), default=None)
    directive = suffixes[2] if no_transaction else None
    how = _OUTSIDE_TRANSACTION if no_transaction else _IN_TRANSACTION
    texts = {
        forward: _FORWARD.format(
            first=f"{directive}\n" if directive else "", forward=forward, rollback=rollback,
            purpose=description.replace("_", " ").replace("-", " "),
            depends=previous[1] if previous else "nothing (first migration)",
            unwritten=files.UNWRITTEN, how=how.format(directive=suffixes[2])),
        rollback: rollback_stub(forward, rollback, directive),
    }
    written: list[Path] = []
    try:
        for name, text in texts.items():
            path = folder / name
            with open(path, "x", encoding="utf-8") as f:  # "x": never overwrite
                f.write(text)
            written.append(path)
        if listing is not None:
            kustomization.write(*listing)
    except FileExistsError as exc:
        for path in written:
            path.unlink()
        raise ValidationError([f"new: {Path(str(exc.filename)).name} already exists; "
                               "nothing written"]) from None
    except OSError as exc:
        for path in written:
            path.unlink()
        raise ConfigError(f"new: cannot write to {str(folder)!r}: {exc.strerror}; "
                          "nothing written") from None
    for path in written:
        print(path)
    log.get().info("migration_created", version=version, name=stem, file=forward,
                   rollback=rollback, no_transaction=no_transaction,
                   kustomization=listing[0].name if listing else None)
    return 0
