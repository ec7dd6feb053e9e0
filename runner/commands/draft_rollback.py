"""`draft-rollback VERSION`: write the first draft of a migration's rollback file.

The draft comes from the forward file's parse tree (runner.drafting.draft) under the header `new`
writes. It is named after the forward file's layout: `NNN_x_rollback.sql` beside
`NNN_x.sql`, `NNN_x.down.sql` beside `NNN_x.up.sql` (SPEC §2). An existing rollback file
is never overwritten, unless it is still, byte for byte, the stub `new` wrote (the guide's
order: `new`, write the forward file, then draft); `--stdout` prints the draft instead,
e.g. to compare with it. No database needed.
"""

from __future__ import annotations

from pathlib import Path

from runner.commands import offline_history
from runner.commands.new import layout_of, rollback_header, rollback_stub
from runner.drafting import draft
from runner.errors import ConfigError, ValidationError
from runner.folder import files, statements
from runner.output import log
from runner.settings import Settings


def _layout(m: files.Migration, sqlx: bool) -> tuple[str, str, str]:
    """`m`'s layout; in the sqlx format sqlx's pair whatever `m`'s suffix: sqlx reads a
    `_rollback.sql` as a second migration, and a `.down.sql` beside a plain `.sql` as
    its revert (SPEC §8)."""
    return layout_of(m.name + ".up.sql" if sqlx else m.file)


def rollback_name(m: files.Migration, sqlx: bool = False) -> str:
    """The rollback file name that pairs with `m`'s layout."""
    return m.name + _layout(m, sqlx)[1]


def render(plan: statements.Plan, result: draft.Draft, name: str, sqlx: bool = False) -> str:
    """The draft file's text: directive, header, body (wrapped like the forward file)."""
    m = plan.migration
    # The directive of the file's layout: sqlx honours only its own, at byte 0.
    head = [_layout(m, sqlx)[2]] if result.no_transaction else []
    head.append(rollback_header(m.file, name).rstrip("\n"))
    head.append(f"--\n-- Drafted by `migration-runner draft-rollback {m.version}` from {m.file}:"
                "\n-- check it, fill in the TODOs, then commit it.")
    if result.squawk_rules:  # as the folder's hand-written rollback files say it
        head.append("\n-- Dropping is the point of a rollback file:\n-- squawk-ignore-file "
                    + ", ".join(result.squawk_rules))
    body = result.statements or ["-- (nothing to drop)"]
    # The forward file's psql-style BEGIN; ... COMMIT; wrapper, if it has one, so
    # `psql -f` stays atomic.
    if plan.wrapped and not result.no_transaction:
        body = ["BEGIN;", "", *body, "", "COMMIT;"]
    return "\n".join([*head, "", *body]) + "\n"


def draft_rollback(settings: Settings, version: int, to_stdout: bool = False) -> int:
    folder = settings.migrations_path
    history = offline_history(settings)  # the folder read as the history format reads it
    m = next((m for m in history.load(folder) if m.version == version), None)
    if m is None:
        raise ValidationError([f"draft-rollback: no forward file with version {version} in "
                               f"{str(folder)!r}; `migration-runner status` lists them"])
    sqlx = history.format == "sqlx"
    name = rollback_name(m, sqlx)
    existing = m.rollback or (folder / name if (folder / name).exists() else None)
    stub = existing is not None and _is_stub(existing, m.file)
    if stub:
        existing = None
    if existing is not None and not to_stdout:
        raise ValidationError([f"draft-rollback: {existing.name} already exists; nothing "
                               "written (--stdout prints the draft to compare with it)"])
    plan = history.plan([m])[0]
    result = draft.draft(plan)
    text = render(plan, result, name, sqlx)
    logger = log.get()
    if result.needs_review:
        logger.warning("rollback_draft_needs_review", version=m.version, name=m.name,
                       file=m.file, rollback=name, lines=[n.line for n in result.needs_review],
                       statements=[f"{n.what} at line {n.line}" for n in result.needs_review])
    if to_stdout:
        print(text, end="")
    else:
        path = folder / name
        _write(path, text, replace=stub)
        print(path)
    logger.info("rollback_drafted", version=m.version, name=m.name, file=m.file,
                rollback=name, drops=result.drops, written=not to_stdout,
                replaced_stub=stub and not to_stdout, no_transaction=result.no_transaction)
    return 0


def _is_stub(path: Path, forward: str) -> bool:
    """Whether the rollback file is still what `new` wrote for `forward`, untouched."""
    directive = layout_of(forward)[2]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return text in (rollback_stub(forward, path.name, None),
                    rollback_stub(forward, path.name, directive))


def _write(path: Path, text: str, replace: bool = False) -> None:
    try:
        # "x": never overwrite, but the untouched stub `new` wrote
        with open(path, "w" if replace else "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise ValidationError([f"draft-rollback: {path.name} already exists; nothing "
                               "written"]) from None
    except OSError as exc:
        raise ConfigError(f"draft-rollback: cannot write {str(path)!r}: {exc.strerror}") from None
