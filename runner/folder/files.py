"""Reading the migrations folder (SPEC §2): names, versions, encoding, checksums.

Everything here runs before the runner connects, so a misnamed or mis-encoded file never
reaches the database. The SQL inside is looked at by `statements`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from runner.errors import ConfigError, ValidationError

# A file *name* pattern; SQL itself is never matched with a regex (see statements.py).
_NAME = re.compile(r"(?P<version>[0-9]{1,18})_(?P<desc>[A-Za-z0-9_-]+?)"
                   r"(?P<kind>_rollback|\.up|\.down)?\.sql")
BOM = "\ufeff"
# The line `new` writes in a forward file's header. Where a file of comments only is a
# valid no-op (the sqlx format), a file still holding it has simply not been written yet.
UNWRITTEN = "TODO: say what this changes and why."
UNWRITTEN_ROLLBACK = "TODO: say what is lost (rows, columns) when this runs."


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    file: str  # name within the folder
    path: Path
    text: str  # as in the file, BOM dropped; CRLF kept so line numbers match the editor
    checksum: str
    rollback: Path | None = None

    @property
    def name(self) -> str:
        """The file stem, e.g. `001_initial_schema` (`.up` / `.down` dropped for sqlx
        pairs: both files of a pair name one migration)."""
        stem = self.file[: -len(".sql")]
        for suffix in (".up", ".down"):
            stem = stem.removesuffix(suffix)
        return stem


def checksum(text: str) -> str:
    """SHA-256 of the text with CRLF turned into LF, so an autocrlf checkout is no edit."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


def decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path.name}:{line}: not valid UTF-8 (byte {exc.start}); "
                         "save the file as UTF-8") from None
    return text[1:] if text.startswith(BOM) else text


@dataclass
class Folder:
    migrations: list[Migration]  # forward files, by version
    problems: list[str]


def unreadable(folder: Path, exc: OSError) -> ConfigError:
    """The one error of every command whose migrations folder is missing or unreadable:
    a setting points at the wrong place (exit 2), whatever the command."""
    return ConfigError(f"migrations folder {str(folder)!r} cannot be read: {exc.strerror}; "
                       "set MIGRATIONS_DIR or --dir", variable="MIGRATIONS_DIR")


def sql_entries(folder: Path) -> list[os.DirEntry[str]]:
    """The folder's `.sql` files, by name: no dot names, no sub-folders. A ConfigError
    when the folder cannot be read."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise unreadable(folder, exc) from None
    # `..data` and `..2026_...` of a mounted ConfigMap start with a dot; is_file() follows
    # the symlinks that point into them.
    return [e for e in entries
            if not e.name.startswith(".") and e.name.endswith(".sql") and e.is_file()]


def read_folder(folder: Path) -> Folder:
    """Every forward file with its rollback; every problem found, none raised."""
    problems: list[str] = []
    forward: dict[int, list[tuple[str, str, Path]]] = {}
    rollbacks: dict[int, list[tuple[str, str, Path]]] = {}
    for entry in sql_entries(folder):
        match = _NAME.fullmatch(entry.name)
        if not match:
            problems.append(f"{entry.name}: name does not match <version>_<description>.sql "
                            "(version: 1-18 digits; description: letters, digits, _ and -)")
            continue
        kind = match["kind"] or ""
        bucket = rollbacks if kind in ("_rollback", ".down") else forward
        pair_key = match["desc"] + (".up" if kind in (".up", ".down") else "")
        bucket.setdefault(int(match["version"]), []).append((pair_key, entry.name, Path(entry)))

    for table, what in ((forward, "forward files"), (rollbacks, "rollback files")):
        for version, found in table.items():
            if len(found) > 1:
                names = ", ".join(name for _, name, _ in found)
                problems.append(f"version {version} is used by {len(found)} {what}: {names}; "
                                "give each migration its own version")

    migrations: list[Migration] = []
    for version in sorted(forward):
        key, name, path = forward[version][0]
        rollback = next((p for k, _, p in rollbacks.get(version, []) if k == key), None)
        try:
            text = decode(path, path.read_bytes())
        except ValueError as exc:
            problems.append(str(exc))
            continue
        except OSError as exc:
            problems.append(f"{name}: cannot be read: {exc.strerror}")
            continue
        if not text.strip():
            problems.append(f"{name}: file is empty; write its SQL or delete it")
            continue
        desc = key[: -len(".up")] if key.endswith(".up") else key
        migrations.append(Migration(version, desc, name, path, text, checksum(text), rollback))

    for version, found in rollbacks.items():
        forward_keys = {k for k, _, _ in forward.get(version, [])}
        for key, name, path in found:
            if key not in forward_keys:
                problems.append(f"{name}: rollback file without its forward file")
                continue
            try:
                decode(path, path.read_bytes())
            except ValueError as exc:
                problems.append(str(exc))
    return Folder(migrations, problems)


def split_name(name: str) -> tuple[str, str, str] | None:
    """(version as written, description, kind: "", "_rollback", ".up" or ".down"), or None
    when the name is not a migration file's."""
    match = _NAME.fullmatch(name)
    return (match["version"], match["desc"], match["kind"] or "") if match else None


def read_rollback(m: Migration) -> Migration:
    """The rollback file of `m` as a Migration of the same version, for the lexer and the
    applier: its own file name, text and checksum. ValueError/OSError when unreadable."""
    if m.rollback is None:
        raise ValueError(f"{m.file}: has no rollback file")
    text = decode(m.rollback, m.rollback.read_bytes())
    return Migration(m.version, m.description, m.rollback.name, m.rollback, text, checksum(text))


def load(folder: Path) -> list[Migration]:
    """The forward migrations, or a ValidationError naming every bad file."""
    result = read_folder(folder)
    if result.problems:
        raise ValidationError(result.problems)
    return result.migrations
