"""REINDEX and CLUSTER of a partitioned table or index in a transactional file, where
only the database knows the relation is partitioned (SPEC §2, §10).

PostgreSQL refuses `REINDEX TABLE` / `REINDEX INDEX` of a partitioned table or index
(commands/indexcmds.c ReindexPartitions, 14+) and `CLUSTER` of a partitioned table
(commands/cluster.c, 15+) inside a transaction block, with 25001. A file that creates
the table itself is refused at validation (folder/transaction_block.py `Partitioned`);
one that maintains a table an earlier migration created is refused here, from the
catalog (`pg_class.relkind` `p` or `I`), before the first pending file is applied.
"""

from __future__ import annotations

from psycopg import sql

from runner.errors import ValidationError
from runner.folder import transaction_block
from runner.folder.statements import Plan, Spelling, line_col
from runner.session.database import Connection

_RELKIND = "SELECT relkind FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass(%s)"


def problems(conn: Connection | None, plans: list[Plan], spelling: Spelling) -> list[str]:
    """`file:line:column: ...` for each REINDEX / CLUSTER of a partitioned relation in a
    transactional plan: created so by an earlier file of `plans`, or so in the database
    (`conn`; None: the files alone, `validate --offline`); the fix in the history
    format's words (`spelling`). From what lexing kept of each plan (`Plan.catalog`):
    no file is parsed again."""
    known = transaction_block.Partitioned()
    found: list[str] = []
    for plan in plans:
        for offset, node in plan.catalog:
            target = transaction_block.maintenance(node)
            if plan.transactional and target is not None:
                refusal = known.refusal(node)
                name, rel, relkind = target
                qualified = sql.Identifier(*(part for part in rel if part)).as_string(None)
                row = (conn.execute(_RELKIND, (qualified,)).fetchone()
                       if refusal is None and conn is not None else None)
                if refusal is None and row is not None and row[0] == relkind:
                    refusal = (f"{name} of the partitioned "
                               f"{'table' if relkind == 'p' else 'index'} "
                               + ".".join(part for part in rel if part))
                if refusal is not None:
                    line, column = line_col(plan.migration.text, offset)
                    found.append(
                        f"{plan.migration.file}:{line}:{column}: {refusal} cannot run "
                        "inside a transaction block (PostgreSQL refuses it with 25001)"
                        + spelling.new_file)
            known.note(node)
    return found


def refuse(conn: Connection, plans: list[Plan], spelling: Spelling) -> None:
    """A ValidationError (exit 5) naming every such statement, before anything runs."""
    if found := problems(conn, plans, spelling):
        raise ValidationError(found)
