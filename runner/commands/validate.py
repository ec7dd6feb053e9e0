"""`validate`: every check, on every file, every problem at once (SPEC §2, §4).

Offline (a CI step on the migrations folder): names, encoding, pairs, and the lexer on
every forward and rollback file. With a database, also the history checks `migrate` would
make, and the catalog's word on the pending files (a REINDEX or CLUSTER of a relation an
applied migration made partitioned), read-only and without the lock. The result goes to
stdout, one problem per line, so a CI log shows it plainly; the log gets the same list.
"""

from __future__ import annotations

from runner.applying import partitioned
from runner.commands import offline_history, read_only, settle, warn_eol_only
from runner.errors import ValidationError
from runner.folder import files, kustomization
from runner.folder.statements import Plan
from runner.histories.history import History, compare, plural
from runner.output import log
from runner.session import silence
from runner.settings import Settings


def file_problems(history: History, folder: files.Folder) -> tuple[list[Plan], list[str]]:
    """The plans of the good forward files, and every problem of every file."""
    problems = list(folder.problems)
    plans, found = history.lex(folder.migrations)
    problems += found
    with_rollback = [m for m in folder.migrations if m.rollback is not None]
    problems += history.lex_rollbacks(with_rollback)[1]
    # A rollback file that is not UTF-8 is reported by read_folder and by its lexing.
    return plans, list(dict.fromkeys(problems))


def validate(settings: Settings, offline: bool) -> int:
    if offline:
        history = offline_history(settings)
        folder = history.read_folder(settings.migrations_path)
        plans, problems = file_problems(history, folder)
        # A REINDEX or CLUSTER of a table an earlier file makes partitioned.
        problems += partitioned.problems(None, plans, history.spelling)
    else:
        with read_only(settings, "validate") as conn:
            history = settle(settings, conn)
            folder = history.read_folder(settings.migrations_path)
            plans, problems = file_problems(history, folder)
            silence.doing("reading the history")
            applied = history.read_if_exists(conn)
            try:  # what `migrate` would refuse first (SPEC §8)
                history.refuse_beside_other(conn, applied, "validate")
            except ValidationError as exc:
                problems += exc.problems
            comparison = compare(folder.migrations, applied, history.eol_only)
            pending = {m.version for m in comparison.pending}
            silence.doing("checking partitioned tables in the catalog")
            problems += partitioned.problems(
                conn, [p for p in plans if p.migration.version in pending], history.spelling)
        warn_eol_only(comparison, history)
        problems += comparison.problems(settings.strict, settings.allow_out_of_order,
                                        history.cli)
        if comparison.missing and not comparison.pending and not settings.strict:
            log.get().warning("database_ahead",
                              versions=[a.version for a in comparison.missing],
                              message="applied versions have no file here (a newer image "
                                      "ran); --strict makes this an error")
    problems += kustomization.problems(settings.migrations_path)
    if problems:
        log.print_lines(problems)
        raise ValidationError(problems)
    rollbacks = sum(1 for m in folder.migrations if m.rollback is not None)
    print(f"ok: {plural(len(folder.migrations), 'migration')}, "
          f"{plural(rollbacks, 'rollback file')}"
          + ("" if offline else ", history consistent"))
    log.get().info("validation_passed", files=len(folder.migrations), rollbacks=rollbacks,
                   offline=offline)
    return 0
