"""Statements PostgreSQL refuses inside, or outside, a transaction block, and statements
that need a client feeding them data: what a migration file may not contain, by how the
runner runs it (SPEC §2).

The first table is every caller of `PreventInTransactionBlock` in src/backend of
PostgreSQL 13 to 18, options included (read in the 13.16, 15.18 and 18.6 sources; where an
entry starts in 14 or 17, that is the release that added its feature). The name each entry gives is
the one the server puts in its 25001 error. Left out, because the text alone cannot tell:

- REINDEX TABLE / INDEX and CLUSTER of a *partitioned* table or index (indexcmds.c
  ReindexPartitions, 14+; cluster.c, 15+): the relation's kind is in the catalog. When
  the file itself creates the table `PARTITION BY` (and its indexes), `Partitioned`
  refuses them here; else runner/applying/partitioned.py looks the kind up before the
  first file is applied.
- walsender.c's BASE_BACKUP, START_REPLICATION, TIMELINE_HISTORY, UPLOAD_MANIFEST:
  replication-protocol commands, not SQL.
- COMMIT PREPARED / ROLLBACK PREPARED (utility.c): transaction control, refused in any
  migration file by statements.py.
- ALTER TYPE ... ADD VALUE: refused in a transaction block until PostgreSQL 11 only.

The second table is every caller of `RequireTransactionBlock` (25P01): statements that
fail when a `-- migrate:no-transaction` file runs them one by one in autocommit. SAVEPOINT,
RELEASE and ROLLBACK TO are among them and are refused there as transaction control.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Node = tuple[str, dict[str, Any]]  # (node type, its fields), as libpg_query's JSON has it


def _options(body: dict[str, Any], key: str = "options") -> dict[str, Any]:
    """A statement's `WITH (...)` list: DefElem name -> its value node (None: no value)."""
    found: dict[str, Any] = {}
    for item in body.get(key, ()):
        elem = item.get("DefElem", {})
        found[elem.get("defname", "")] = elem.get("arg")
    return found


def _boolean(options: dict[str, Any], name: str, default: bool) -> bool:
    """An option's value as PostgreSQL's defGetBoolean reads it (commands/define.c): no
    value is true; 0/1; true/false/on/off (case-insensitive)."""
    if name not in options:
        return default
    arg = options[name]
    if arg is None:
        return True
    if "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0))
    word = arg.get("String", {}).get("sval")
    if word is None and "TypeName" in arg:  # `off` reaches the grammar as a type name
        word = arg["TypeName"]["names"][-1]["String"]["sval"]
    return str(word).lower() in ("true", "on")


_CURSOR_OPT_HOLD = 0x0020  # include/nodes/parsenodes.h of the parser pglast embeds (18)


class Subscriptions:
    """What a file did to subscriptions so far: DROP SUBSCRIPTION is only refused when
    the subscription has a slot, and `SET (slot_name = NONE)` earlier in the same file
    (the documented way to drop one in a transaction) takes it away."""

    def __init__(self) -> None:
        self.slotless: set[str] = set()

    def note(self, node: Node) -> None:
        kind, body = node
        if kind == "AlterSubscriptionStmt" and body.get("kind") == "ALTER_SUBSCRIPTION_OPTIONS":
            slot = _options(body).get("slot_name", {}) or {}
            if str(slot.get("String", {}).get("sval", "")).lower() == "none":
                self.slotless.add(body.get("subname", ""))


Check = Callable[[dict[str, Any], Subscriptions], bool]


def _create_subscription(body: dict[str, Any], _: Subscriptions) -> bool:
    options = _options(body)
    # connect = false turns create_slot's default to false (parse_subscription_options).
    return _boolean(options, "create_slot", _boolean(options, "connect", True))


def _drop_subscription(body: dict[str, Any], subs: Subscriptions) -> bool:
    return body.get("subname", "") not in subs.slotless


def _alter_subscription(kind: str) -> Check:
    def check(body: dict[str, Any], _: Subscriptions) -> bool:
        return body.get("kind") == kind and _boolean(_options(body), "refresh", True)
    return check


def _alter_subscription_option(name: str, refused: Callable[[bool], bool]) -> Check:
    def check(body: dict[str, Any], _: Subscriptions) -> bool:
        options = _options(body)
        return (body.get("kind") == "ALTER_SUBSCRIPTION_OPTIONS" and name in options
                and refused(_boolean(options, name, True)))
    return check


def _reindex_concurrently(body: dict[str, Any], _: Subscriptions) -> bool:
    return _boolean(_options(body, "params"), "concurrently", False)


def _detach_concurrently(body: dict[str, Any], _: Subscriptions) -> bool:
    return any(c.get("AlterTableCmd", {}).get("subtype") == "AT_DetachPartition"
               and c["AlterTableCmd"].get("def", {}).get("PartitionCmd", {}).get("concurrent")
               for c in body.get("cmds", ()))


def _always(_: dict[str, Any], __: Subscriptions) -> bool:
    return True


def _field(name: str, *values: Any) -> Check:
    def check(body: dict[str, Any], _: Subscriptions) -> bool:
        return body.get(name) in values
    return check


@dataclass(frozen=True)
class Refusal:
    node: str  # libpg_query's parse node
    applies: Check  # to this statement, given what the file did before it
    name: str  # as the server's error names it
    source: str  # the PostgreSQL function (file) that refuses it
    versions: str  # PostgreSQL majors that refuse it


IN_TRANSACTION_BLOCK = [Refusal(*row) for row in (
    ("CreatedbStmt", _always, "CREATE DATABASE",
     "standard_ProcessUtility (tcop/utility.c)", "13-18"),
    ("DropdbStmt", _always, "DROP DATABASE",
     "standard_ProcessUtility (tcop/utility.c)", "13-18"),
    ("CreateTableSpaceStmt", _always, "CREATE TABLESPACE",
     "standard_ProcessUtility (tcop/utility.c)", "13-18"),
    ("DropTableSpaceStmt", _always, "DROP TABLESPACE",
     "standard_ProcessUtility (tcop/utility.c)", "13-18"),
    ("AlterSystemStmt", _always, "ALTER SYSTEM",
     "standard_ProcessUtility (tcop/utility.c)", "13-18"),
    ("IndexStmt", _field("concurrent", True), "CREATE INDEX CONCURRENTLY",
     "ProcessUtilitySlow (tcop/utility.c)", "13-18"),
    ("DropStmt", lambda b, _: b.get("removeType") == "OBJECT_INDEX" and bool(b.get("concurrent")),
     "DROP INDEX CONCURRENTLY", "ExecDropStmt (tcop/utility.c)", "13-18"),
    ("AlterTableStmt", _detach_concurrently, "ALTER TABLE ... DETACH CONCURRENTLY",
     "ProcessUtilitySlow (tcop/utility.c)", "14-18"),
    ("ReindexStmt", _reindex_concurrently, "REINDEX CONCURRENTLY",
     "standard_ProcessUtility (tcop/utility.c) in 13, ExecReindex (commands/indexcmds.c)",
     "13-18"),
    ("ReindexStmt", _field("kind", "REINDEX_OBJECT_SCHEMA"), "REINDEX SCHEMA",
     "standard_ProcessUtility (tcop/utility.c) in 13, ExecReindex (commands/indexcmds.c)",
     "13-18"),
    ("ReindexStmt", _field("kind", "REINDEX_OBJECT_SYSTEM"), "REINDEX SYSTEM",
     "standard_ProcessUtility (tcop/utility.c) in 13, ExecReindex (commands/indexcmds.c)",
     "13-18"),
    ("ReindexStmt", _field("kind", "REINDEX_OBJECT_DATABASE"), "REINDEX DATABASE",
     "standard_ProcessUtility (tcop/utility.c) in 13, ExecReindex (commands/indexcmds.c)",
     "13-18"),
    ("ClusterStmt", lambda b, _: "relation" not in b, "CLUSTER",
     "cluster (commands/cluster.c), the form without a table", "13-18"),
    ("VacuumStmt", _field("is_vacuumcmd", True), "VACUUM",
     "vacuum (commands/vacuum.c); ANALYZE alone is allowed", "13-18"),
    ("DiscardStmt", _field("target", "DISCARD_ALL"), "DISCARD ALL",
     "DiscardAll (commands/discard.c)", "13-18"),
    ("AlterDatabaseStmt", lambda b, _: "tablespace" in _options(b),
     "ALTER DATABASE SET TABLESPACE", "AlterDatabase (commands/dbcommands.c)", "13-18"),
    ("CreateSubscriptionStmt", _create_subscription,
     "CREATE SUBSCRIPTION ... WITH (create_slot = true)",
     "CreateSubscription (commands/subscriptioncmds.c); create_slot defaults to true "
     "unless connect = false", "13-18"),
    ("DropSubscriptionStmt", _drop_subscription, "DROP SUBSCRIPTION",
     "DropSubscription (commands/subscriptioncmds.c), when it has a slot", "13-18"),
    ("AlterSubscriptionStmt", _field("kind", "ALTER_SUBSCRIPTION_REFRESH"),
     "ALTER SUBSCRIPTION ... REFRESH", "AlterSubscription (commands/subscriptioncmds.c)",
     "14-18"),
    ("AlterSubscriptionStmt", _alter_subscription("ALTER_SUBSCRIPTION_SET_PUBLICATION"),
     "ALTER SUBSCRIPTION with refresh", "AlterSubscription (commands/subscriptioncmds.c), "
     "SET PUBLICATION; refresh defaults to true", "14-18"),
    ("AlterSubscriptionStmt", _alter_subscription("ALTER_SUBSCRIPTION_ADD_PUBLICATION"),
     "ALTER SUBSCRIPTION with refresh", "AlterSubscription (commands/subscriptioncmds.c), "
     "ADD PUBLICATION; refresh defaults to true", "14-18"),
    ("AlterSubscriptionStmt", _alter_subscription("ALTER_SUBSCRIPTION_DROP_PUBLICATION"),
     "ALTER SUBSCRIPTION with refresh", "AlterSubscription (commands/subscriptioncmds.c), "
     "DROP PUBLICATION; refresh defaults to true", "14-18"),
    ("AlterSubscriptionStmt", _alter_subscription_option("failover", lambda _: True),
     "ALTER SUBSCRIPTION ... SET (failover)",
     "AlterSubscription / CheckAlterSubOption (commands/subscriptioncmds.c)", "17-18"),
    ("AlterSubscriptionStmt", _alter_subscription_option("two_phase", lambda on: not on),
     "ALTER SUBSCRIPTION ... SET (two_phase)",
     "CheckAlterSubOption (commands/subscriptioncmds.c), two_phase = false", "18"),
)]

# Callers of RequireTransactionBlock (tcop/utility.c, commands/portalcmds.c), 13-18.
OUTSIDE_TRANSACTION_BLOCK = [Refusal(*row) for row in (
    ("LockStmt", _always, "LOCK TABLE", "standard_ProcessUtility (tcop/utility.c)", "13-18"),
    ("DeclareCursorStmt", lambda b, _: not int(b.get("options", 0)) & _CURSOR_OPT_HOLD,
     "DECLARE CURSOR", "PerformCursorOpen (commands/portalcmds.c), without WITH HOLD",
     "13-18"),
)]


_IN_BY_NODE: dict[str, list[Refusal]] = {}
for _refusal in IN_TRANSACTION_BLOCK:
    _IN_BY_NODE.setdefault(_refusal.node, []).append(_refusal)


def refused_in_transaction(node: Node, subs: Subscriptions) -> Refusal | None:
    """The entry of IN_TRANSACTION_BLOCK that refuses this statement in a transactional
    file, given what the file did before it; `subs.note` must see every statement."""
    kind, body = node
    return next((r for r in _IN_BY_NODE.get(kind, ()) if r.applies(body, subs)), None)


def refused_outside_transaction(node: Node) -> Refusal | None:
    """The entry of OUTSIDE_TRANSACTION_BLOCK that refuses this statement when it runs on
    its own in autocommit, as a `-- migrate:no-transaction` file's statements do."""
    kind, body = node
    return next((r for r in OUTSIDE_TRANSACTION_BLOCK
                 if r.node == kind and r.applies(body, Subscriptions())), None)


def client_stream(node: Node) -> str | None:
    """`COPY ... FROM STDIN` or `TO STDOUT`: the server then waits for, or sends, a copy
    stream that only a client such as psql feeds or reads (protocol CopyIn/CopyOut), and
    the runner sends SQL text only. A file name or PROGRAM is read by the server: fine."""
    kind, body = node
    if kind != "CopyStmt" or body.get("filename"):
        return None
    return "COPY ... FROM STDIN" if body.get("is_from") else "COPY ... TO STDOUT"


Relation = tuple[str | None, str]  # (schema as written, or None; name)


def relation(body: dict[str, Any]) -> Relation | None:
    """The (schema, name) a statement's `relation` names."""
    rel = body.get("relation")
    return (rel.get("schemaname"), rel["relname"]) if rel and rel.get("relname") else None


def _same(a: Relation, b: Relation) -> bool:
    return a[1] == b[1] and (a[0] is None or b[0] is None or a[0] == b[0])


def maintenance(node: Node) -> tuple[str, Relation, str] | None:
    """For REINDEX TABLE / INDEX and CLUSTER of one relation, not CONCURRENTLY (refused
    in a transaction block whatever the relation): the name the server's 25001 error
    gives, the relation, and the relkind it is refused on (pg_class: `p` partitioned
    table, `I` partitioned index)."""
    kind, body = node
    rel = relation(body)
    if rel is None:
        return None
    if kind == "ReindexStmt" and not _reindex_concurrently(body, Subscriptions()):
        if body.get("kind") == "REINDEX_OBJECT_TABLE":
            return "REINDEX TABLE", rel, "p"
        if body.get("kind") == "REINDEX_OBJECT_INDEX":
            return "REINDEX INDEX", rel, "I"
    if kind == "ClusterStmt":
        return "CLUSTER", rel, "p"
    return None


def catalog_fact(node: Node) -> Node | None:
    """What runner/applying/partitioned.py reads of a statement, kept with the file's plan
    so that no file is parsed twice: of a CREATE TABLE or CREATE INDEX what `Partitioned`
    notes, a REINDEX or CLUSTER of one relation whole; None for any other statement."""
    kind, body = node
    if kind == "CreateStmt":
        return kind, {"relation": body.get("relation"), "partspec": bool(body.get("partspec"))}
    if kind == "IndexStmt":
        return kind, {"relation": body.get("relation"), "idxname": body.get("idxname")}
    return node if maintenance(node) is not None else None


class Partitioned:
    """The partitioned tables, and the indexes on them, that a file (or the pending
    files, in order) created so far: REINDEX or CLUSTER of one of them is refused in a
    transaction block (ReindexPartitions in commands/indexcmds.c, 14+; cluster_rel's
    caller in commands/cluster.c, 15+)."""

    def __init__(self) -> None:
        self.tables: list[Relation] = []
        self.indexes: list[Relation] = []
        self.plain: list[Relation] = []  # tables created without PARTITION BY

    def note(self, node: Node) -> None:
        kind, body = node
        rel = relation(body)
        if rel is None:
            return
        if kind == "CreateStmt":
            (self.tables if body.get("partspec") else self.plain).append(rel)
        elif kind == "IndexStmt" and body.get("idxname") and (table := self._table(rel)):
            self.indexes.append((rel[0] or table[0], body["idxname"]))  # the table's schema

    def _table(self, rel: Relation) -> Relation | None:
        return next((t for t in self.tables if _same(t, rel)), None)

    def refusal(self, node: Node) -> str | None:
        """`REINDEX TABLE reading` (say) when this statement maintains one of them."""
        found = maintenance(node)
        if found is None:
            return None
        name, rel, relkind = found
        known = self.tables if relkind == "p" else self.indexes
        # A name as written: `reading` may be `public.reading`; a plain table created
        # under exactly this name is not the partitioned one.
        if rel not in known and (rel in self.plain or not any(_same(k, rel) for k in known)):
            return None
        return f"{name} of the partitioned {'table' if relkind == 'p' else 'index'} " + \
            ".".join(part for part in rel if part)
