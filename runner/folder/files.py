"""Reading the migrations folder (SPEC §2): names, versions, encoding, checksums.

Everything here runs before the runner connects, so a misnamed or mis-encoded file never
reaches the database. The SQL inside is looked at by `statements`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
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
    # The rollback file's bytes, read with the forward files (SPEC §10.4); None when there
    # is no rollback file or it could not be read (a problem of read_folder then).
    rollback_data: bytes | None = field(default=None, repr=False, compare=False)

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


@dataclass(frozen=True)
class Read:
    """One `.sql` file of the folder as read: its bytes, or the error reading them."""

    name: str
    path: Path  # the folder's path joined with the name: what messages show
    data: bytes | None
    error: OSError | None = None


# A mounted ConfigMap (or Secret, or projected volume) is a directory of top-level
# symlinks `name -> ..data/name`, with `..data -> ..2026_11_26_08_00_00.123`; the kubelet
# writes an update into a new `..2026_...` directory, renames a new `..data` link over the
# old one, then deletes the old directory (kubernetes pkg/volume/util/atomic_writer.go).
_DATA = "..data"
_ATTEMPTS = 10


class _Changed(Exception):
    """A listed file vanished before it was read."""


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _read_once(folder: Path) -> list[Read]:
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # The folder's content is what `..data` points at, resolved once: every name is
        # listed and read relative to that one directory, so a swap of `..data` during the
        # read cannot mix two versions (the top-level links resolve `..data` per open).
        try:
            data_fd = os.open(_DATA, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                              dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            data_fd = os.dup(dir_fd)
        try:
            with os.scandir(data_fd) as scan:
                names = sorted(e.name for e in scan if _is_sql(e))
            found: list[Read] = []
            for name in names:
                try:
                    found.append(Read(name, folder / name, _read_at(data_fd, name)))
                except FileNotFoundError:
                    raise _Changed from None  # the kubelet deleted the version being read
                except OSError as exc:
                    found.append(Read(name, folder / name, None, exc))
            return found
        finally:
            os.close(data_fd)
    finally:
        os.close(dir_fd)


def _is_sql(entry: os.DirEntry[str]) -> bool:
    # `..data` and `..2026_...` of a mounted ConfigMap start with a dot; is_file() follows
    # the symlinks that point into them.
    return (not entry.name.startswith(".") and entry.name.endswith(".sql")
            and entry.is_file())


def sql_names(folder: Path) -> list[str]:
    """The names of the folder's `.sql` files, as `read_sql_files` lists them, without
    reading them (the layout is in the names). A ConfigError when the folder cannot be
    read."""
    try:
        with os.scandir(folder) as scan:
            return sorted(e.name for e in scan if _is_sql(e))
    except OSError as exc:
        raise unreadable(folder, exc) from None


def read_sql_files(folder: Path) -> list[Read]:
    """Every `.sql` file of the folder (no dot names, no sub-folders), by name, each read
    once through one resolution of the folder (SPEC §10.4): in a mounted ConfigMap, the
    directory `..data` points at when the read starts. A file that vanishes part-way (the
    kubelet deleting the version being read after a swap) starts the read again. A
    ConfigError (`unreadable`) when the folder cannot be read."""
    for _ in range(_ATTEMPTS):
        try:
            return _read_once(folder)
        except _Changed:
            continue
        except OSError as exc:
            raise unreadable(folder, exc) from None
    raise ValidationError([f"migrations folder {str(folder)!r} kept changing while it was "
                           f"read ({_ATTEMPTS} attempts); run again"])


def read_folder(folder: Path) -> Folder:
    """Every forward file with its rollback (both read once, SPEC §10.4); every problem
    found, none raised."""
    problems: list[str] = []
    forward: dict[int, list[tuple[str, str, Path]]] = {}
    rollbacks: dict[int, list[tuple[str, str, Path]]] = {}
    reads = {r.name: r for r in read_sql_files(folder)}
    for name in reads:
        match = _NAME.fullmatch(name)
        if not match:
            problems.append(f"{name}: name does not match <version>_<description>.sql "
                            "(version: 1-18 digits; description: letters, digits, _ and -)")
            continue
        kind = match["kind"] or ""
        bucket = rollbacks if kind in ("_rollback", ".down") else forward
        pair_key = match["desc"] + (".up" if kind in (".up", ".down") else "")
        bucket.setdefault(int(match["version"]), []).append((pair_key, name, reads[name].path))

    for table, what in ((forward, "forward files"), (rollbacks, "rollback files")):
        for version, found in table.items():
            if len(found) > 1:
                names = ", ".join(name for _, name, _ in found)
                problems.append(f"version {version} is used by {len(found)} {what}: {names}; "
                                "give each migration its own version")

    def data(name: str, rollback: bool = False) -> bytes | None:
        """The bytes of a file, a problem when they are not UTF-8 (then None, but for a
        rollback file, whose lexing reports it again in the same words)."""
        read = reads.pop(name)
        if read.data is None:
            problems.append(f"{name}: cannot be read: {read.error and read.error.strerror}")
            return None
        try:
            decode(read.path, read.data)
        except ValueError as exc:
            problems.append(str(exc))
            return read.data if rollback else None
        return read.data

    by_forward: dict[tuple[int, str], tuple[str, Path]] = {}
    for version, found in rollbacks.items():
        forward_keys = {k for k, _, _ in forward.get(version, [])}
        for key, name, path in found:
            if key not in forward_keys:
                problems.append(f"{name}: rollback file without its forward file")
                continue
            by_forward[version, key] = name, path

    migrations: list[Migration] = []
    for version in sorted(forward):
        key, name, path = forward[version][0]
        raw = data(name)
        if raw is None:
            continue
        text = decode(path, raw)
        del raw  # one copy of a large file held, not two
        if not text.strip():
            problems.append(f"{name}: file is empty; write its SQL or delete it")
            continue
        desc = key[: -len(".up")] if key.endswith(".up") else key
        rollback_name, rollback = by_forward.get((version, key), ("", None))
        migrations.append(Migration(version, desc, name, path, text, checksum(text), rollback,
                                    data(rollback_name, True) if rollback else None))
    for name, _ in by_forward.values():
        if name in reads:  # a rollback of a forward file that is a problem itself
            data(name)
    return Folder(migrations, problems)


def split_name(name: str) -> tuple[str, str, str] | None:
    """(version as written, description, kind: "", "_rollback", ".up" or ".down"), or None
    when the name is not a migration file's."""
    match = _NAME.fullmatch(name)
    return (match["version"], match["desc"], match["kind"] or "") if match else None


def read_rollback(m: Migration) -> Migration:
    """The rollback file of `m` as a Migration of the same version, for the lexer and the
    applier: its own file name, text and checksum, from the bytes read with `m` (never
    read again: SPEC §10.4). ValueError when they are not UTF-8 or were unreadable."""
    if m.rollback is None:
        raise ValueError(f"{m.file}: has no rollback file")
    if m.rollback_data is None:  # read_folder reported why
        raise ValueError(f"{m.rollback.name}: cannot be read")
    text = decode(m.rollback, m.rollback_data)
    return Migration(m.version, m.description, m.rollback.name, m.rollback, text, checksum(text))


def load(folder: Path) -> list[Migration]:
    """The forward migrations, or a ValidationError naming every bad file."""
    result = read_folder(folder)
    if result.problems:
        raise ValidationError(result.problems)
    return result.migrations
