"""`new DESCRIPTION`: write the next migration and its rollback file (SPEC §4).

The version is one more than the highest in the folder (rollback files count, so a
forward file deleted by mistake is not silently reused), zero-padded to the width the
folder uses, 3 digits in an empty one. Both files get the header the migration guide
asks for and nothing else: a header-only file fails validation until its SQL is written.
No database needed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from runner import files, log
from runner.errors import ConfigError, ValidationError
from runner.settings import Settings

_DESCRIPTION = re.compile(r"[A-Za-z0-9_-]+")
DEFAULT_WIDTH = 3

_FORWARD = """\
-- {forward}
-- Purpose:    {purpose}
--             TODO: say what this changes and why.
-- Depends on: {depends}
-- Rollback:   {rollback}
--
-- Runs in one transaction; the runner sets lock_timeout itself, so no SET here.
-- For CREATE INDEX CONCURRENTLY and friends, make this the first line of the file:
--   -- migrate:no-transaction
"""
_ROLLBACK = """\
-- {rollback}
-- Purpose:    undo {forward}.
--             TODO: say what is lost (rows, columns) when this runs.
-- Depends on: nothing newer applied (the runner rolls back newest first).
-- Rollback:   this is the rollback of {forward}.
"""


def rollback_header(forward: str, rollback: str) -> str:
    """The header of a rollback file: the one `new` writes, reused by `draft-rollback`."""
    return _ROLLBACK.format(forward=forward, rollback=rollback)


def check_description(text: str) -> str:
    if not _DESCRIPTION.fullmatch(text):
        raise ConfigError(f"new: description {text!r} may contain only letters, digits, _ and "
                          "- (e.g. add_study_notes)")
    if text.endswith("_rollback"):
        raise ConfigError("new: a description ending in _rollback would name a rollback file")
    if len(text) > 200:
        raise ConfigError("new: description longer than 200 characters")
    return text


def _existing(folder: Path) -> list[tuple[int, str, str, str]]:
    """(version, version as written, kind, file name) of every migration-named file."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise ConfigError(f"new: migrations folder {str(folder)!r} cannot be read: "
                          f"{exc.strerror}; set MIGRATIONS_DIR or --dir") from None
    found = []
    for name in names:
        parts = files.split_name(name) if not name.startswith(".") else None
        if parts:
            found.append((int(parts[0]), parts[0], parts[2], name))
    return found


def new(settings: Settings, description: str, number: int | None = None) -> int:
    description = check_description(description)
    if number is not None and not 0 <= number < 10**18:
        raise ConfigError("new: --number takes a version of 1 to 18 digits")
    folder = settings.migrations_path
    existing = _existing(folder)
    version = number if number is not None else max((v for v, *_ in existing), default=0) + 1
    taken = [name for v, _, _, name in existing if v == version]
    if taken:
        raise ValidationError([f"new: version {version} is already used by "
                               f"{', '.join(taken)}; nothing written"])
    width = max((len(text) for _, text, _, _ in existing), default=DEFAULT_WIDTH)
    stem = f"{version:0{width}d}_{description}"
    forward, rollback = f"{stem}.sql", f"{stem}_rollback.sql"
    previous = max(((v, name) for v, _, kind, name in existing
                    if v < version and kind in ("", ".up")), default=None)
    fields = {"forward": forward, "rollback": rollback,
              "purpose": description.replace("_", " ").replace("-", " "),
              "depends": previous[1] if previous else "nothing (first migration)"}
    written: list[Path] = []
    try:
        for name, template in ((forward, _FORWARD), (rollback, _ROLLBACK)):
            path = folder / name
            with open(path, "x", encoding="utf-8") as f:  # "x": never overwrite
                f.write(template.format(**fields))
            written.append(path)
    except FileExistsError as exc:
        for path in written:
            path.unlink()
        raise ValidationError([f"new: {Path(str(exc.filename)).name} already exists; "
                               "nothing written"]) from None
    except OSError as exc:
        for path in written:
            path.unlink()
        raise ConfigError(f"new: cannot write to {str(folder)!r}: {exc.strerror}") from None
    for path in written:
        print(path)
    log.get().info("migration_created", version=version, name=stem, file=forward,
                   rollback=rollback)
    return 0
