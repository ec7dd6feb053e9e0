"""The `kustomization.yaml` beside the migrations: its configMapGenerator's file list.

Kubernetes deployments mount the migrations from a ConfigMap that kustomize generates
from this list. kustomize takes no globs, so a file missing from the list is silently
missing from the pod, whose runner then reports "nothing to do". `validate` therefore
compares the list with the folder, and `new` adds the files it writes.

The file is edited as text, not through a YAML library: a load-and-dump round trip
drops its comments and reorders its keys, and the one structure touched here — a block
list under a `files:` key — is plain to find line by line. Flow lists (`files: [a, b]`)
are read but not edited.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# The names kustomize looks for in a folder, in its order of preference
# (sigs.k8s.io/kustomize/api/konfig: RecognizedKustomizationFileNames).
NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


@dataclass
class Block:
    """A block-style `files:` list: the key's line, the least indentation of its items,
    and the lines of its items."""

    key_line: int
    indent: int
    items: list[int] = field(default_factory=list)


def find(folder: Path) -> Path | None:
    """The kustomization file in `folder`, or None when it has none."""
    return next((folder / n for n in NAMES if (folder / n).is_file()), None)


def _unquote(value: str) -> str:
    return value.strip().strip("'\"")


def _content(line: str) -> str:
    return line.split(" #", 1)[0].strip()


def parse(text: str) -> tuple[list[str], list[Block]]:
    """Every entry of every `files:` list (configMapGenerator and secretGenerator alike),
    block or flow style, as written (`file.sql` or kustomize's `key=file.sql`); and the
    block lists, in file order."""
    entries: list[str] = []
    blocks: list[Block] = []
    current: Block | None = None
    for i, raw in enumerate(text.splitlines()):
        stripped = _content(raw)
        if not stripped:
            continue
        indent = len(raw) - len(raw.lstrip())
        if current is not None:
            # YAML lets a block list stand at its key's own indentation.
            if stripped.startswith("- ") and indent >= current.indent:
                entries.append(_unquote(stripped[2:]))
                current.items.append(i)
                continue
            current = None
        key = stripped[2:].lstrip() if stripped.startswith("- ") else stripped
        if not key.startswith("files:"):
            continue
        rest = key[len("files:"):].strip()
        if rest.startswith("["):
            entries += [_unquote(e) for e in rest.strip("[]").split(",") if e.strip()]
        elif not rest:
            current = Block(i, indent + (len(stripped) - len(key)))
            blocks.append(current)
    return entries, blocks


def _file_of(entry: str) -> str:
    # kustomize's `[key=]path`: the key names the file in the ConfigMap.
    return entry.split("=", 1)[1] if "=" in entry else entry


def problems(folder: Path) -> list[str]:
    """Each difference between the folder's `.sql` files and its kustomization's file
    lists, one message naming the file and the fix; [] when the folder has no
    kustomization file or it lists exactly the folder's `.sql` files. Non-`.sql` entries
    are not looked at (the runner ignores such files)."""
    path = find(folder)
    if path is None:
        return []
    try:
        entries, _ = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path.name}: cannot be read ({exc}); it must list every .sql file of "
                "this folder under files:"]
    on_disk = {e.name for e in os.scandir(folder)
               if e.name.endswith(".sql") and not e.name.startswith(".") and e.is_file()}
    found: list[str] = []
    listed: list[str] = []
    for entry in entries:
        name = _file_of(entry)
        if not name.endswith(".sql"):
            continue
        if "=" in entry and entry.split("=", 1)[0] != Path(name).name:
            found.append(f"{path.name}: {entry} mounts {name} under another name; list it "
                         f"as {name}")
        listed.append(name)
    for name in sorted(on_disk - set(listed)):
        found.append(f"{path.name}: {name} is not listed under files:, so the ConfigMap "
                     "mounted at /migrations lacks it; add it")
    for name in sorted(set(listed) - on_disk):
        found.append(f"{path.name}: lists {name}, which is not in this folder; remove it "
                     "or restore the file")
    for name in sorted({n for n in listed if listed.count(n) > 1}):
        found.append(f"{path.name}: lists {name} more than once; keep one")
    return found


def with_files(folder: Path, names: list[str]) -> tuple[Path, str] | None:
    """The folder's kustomization file and its text with `names` added to its first block
    `files:` list, each before the first entry that sorts after it (names already listed
    are left alone); None when the folder has no kustomization file. ValueError, naming
    the fix, when the file cannot be read or has no block `files:` list."""
    path = find(folder)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name}: cannot be read ({exc})") from None
    entries, blocks = parse(text)
    if not blocks:
        raise ValueError(f"{path.name}: has no `files:` list written one entry per line; "
                         f"add {', '.join(names)} to its configMapGenerator by hand")
    block = blocks[0]
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if text.endswith("\r\n") else "\n"
    if not lines[-1].endswith(("\n", "\r")):
        lines[-1] += newline
    if block.items:
        first = lines[block.items[0]]
        indent = first[: len(first) - len(first.lstrip())]
    else:
        indent = " " * (block.indent + 2)
    listed = {_file_of(e) for e in entries}
    values = [(_file_of(_unquote(_content(lines[i])[2:])), i) for i in block.items]
    end = block.items[-1] + 1 if block.items else block.key_line + 1
    # Descending, so that each insertion point (an original line index) is still right.
    for name in sorted(set(names) - listed, reverse=True):
        at = next((i for value, i in values if value > name), end)
        lines.insert(at, f"{indent}- {name}{newline}")
    return path, "".join(lines)


def write(path: Path, text: str) -> None:
    """Replace `path` with `text` by a rename, so an interrupted `new` never leaves half a
    kustomization. OSError when the folder is not writable."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
