"""What each statement of a forward file creates, and the node that drops it (issue 14).

Used by runner.drafting.draft. Every CREATE becomes a `Created` holding a DropStmt (or ALTER TABLE
... DROP) node built from the forward statement's own name nodes, so pglast's deparser
prints the names: quoting and schema qualification are PostgreSQL's, never string surgery.
What a DROP cannot undo — data changes, ALTER COLUMN TYPE, DROP, ALTER TYPE ... ADD VALUE,
DO, and any statement not known here — becomes a `Note` naming the statement and its line.

A part of a table created in the same file (index, trigger, policy, rule, column or
constraint added later, comment, grant, rows) is recorded with that table as its owner:
PostgreSQL drops a table's indexes, triggers, rules, policies, constraints and owned
sequences with it ("DROP TABLE", PostgreSQL docs), so runner.drafting.draft only drops such a part
itself when it refers to an object created after the table. Those references are traced
for foreign keys, column types and trigger functions, not inside expressions or bodies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums import AlterTableType, DropBehavior, FunctionParameterMode, ObjectType

Key = tuple[str, str, str]  # (namespace: rel, type, func, schema or ext; schema; name)
# Object types named by their table and their own name: they go with the table.
_PARTS = {"OBJECT_COLUMN", "OBJECT_TRIGGER", "OBJECT_POLICY", "OBJECT_RULE",
          "OBJECT_TABCONSTRAINT"}


@dataclass
class Created:
    """Something the forward file creates, with the node that drops it."""

    key: Key | None
    drop: Any  # a DropStmt or AlterTableStmt node; None: it has no name to drop it by
    line: int
    what: str  # e.g. "CREATE TABLE", for comments
    owner: Created | None = None  # a table created in this file that it goes with
    deps: list[Created] = field(default_factory=list)  # objects of this file it refers to
    review: str = ""  # why a person should check the drop (IF NOT EXISTS, OR REPLACE)
    concurrent: bool = False
    cascade_for: list[Created] = field(default_factory=list)  # unnamed dependants
    gone: bool = False  # dropped again by the forward file itself


@dataclass(frozen=True)
class Note:
    """A statement the draft cannot undo: a comment at its place, and a warning."""

    line: int
    what: str
    why: str = "write the reverse by hand"


# ALTER TABLE subcommands whose words differ from their AlterTableType name.
_SUBCOMMANDS = {"AT_EnableRowSecurity": "ENABLE ROW LEVEL SECURITY",
                "AT_DisableRowSecurity": "DISABLE ROW LEVEL SECURITY",
                "AT_ForceRowSecurity": "FORCE ROW LEVEL SECURITY",
                "AT_ColumnDefault": "ALTER COLUMN SET/DROP DEFAULT",
                "AT_SetNotNull": "ALTER COLUMN SET NOT NULL",
                "AT_DropNotNull": "ALTER COLUMN DROP NOT NULL"}


def _camel(name: str) -> str:
    return " ".join(re.findall(r"[A-Z][a-z]*", name)).upper()


def _label(node: Any) -> str:
    """The statement's command, e.g. UPDATE, DROP TABLE, CREATE ROLE."""
    name = type(node).__name__
    if name == "DropStmt":
        return "DROP " + _objtype(node.removeType)
    if name == "GrantStmt":
        return "GRANT" if node.is_grant else "REVOKE"
    if name == "AlterEnumStmt":
        return "ALTER TYPE … ADD VALUE" if node.newVal and not node.oldVal else "ALTER TYPE"
    fixed = {"DoStmt": "DO", "CommentStmt": "COMMENT ON", "RenameStmt": "ALTER … RENAME",
             "AlterObjectSchemaStmt": "ALTER … SET SCHEMA", "AlterOwnerStmt": "ALTER … OWNER"}
    return str(fixed.get(name) or _camel(name.removesuffix("Stmt")))


def _objtype(objtype: Any) -> str:
    word: str = objtype.name.removeprefix("OBJECT_")
    return {"MATVIEW": "MATERIALIZED VIEW", "TABCONSTRAINT": "CONSTRAINT"}.get(
        word, word.replace("_", " "))


def _names(rangevar: Any, schema: str | None) -> tuple[str, ...]:
    """A relation's name parts; `schema` qualifies a name inside CREATE SCHEMA."""
    qualifier = rangevar.schemaname or schema
    return (qualifier, rangevar.relname) if qualifier else (rangevar.relname,)


def _strings(names: Any) -> tuple[str, ...]:
    return tuple(n.sval for n in names)


def _key(space: str, names: tuple[str, ...]) -> Key:
    return (space, names[-2] if len(names) > 1 else "", names[-1])


def _same(a: Key, b: Key) -> bool:
    # An unqualified name matches any schema: the search_path is not known here.
    return a[0] == b[0] and a[2] == b[2] and (a[1] == b[1] or not a[1] or not b[1])


class Inverter:
    def __init__(self, transactional: bool = True) -> None:
        self.items: list[Created | Note] = []
        self.transactional = transactional

    # --- bookkeeping -----------------------------------------------------------------------
    def find(self, key: Key) -> Created | None:
        for item in reversed(self.items):
            if isinstance(item, Created) and not item.gone and item.key and _same(item.key, key):
                return item
        return None

    def add(self, obj: Created, deps: list[Key] | None = None) -> None:
        obj.deps = [d for d in map(self.find, deps or ()) if d is not None and d is not obj]
        self.items.append(obj)

    def note(self, line: int, what: str, why: str = "write the reverse by hand") -> None:
        self.items.append(Note(line, what, why))

    # --- nodes ------------------------------------------------------------------------------
    @staticmethod
    def drop(objtype: str, objects: Any, concurrent: bool = False) -> Any:
        return ast.DropStmt(objects=objects, removeType=getattr(ObjectType, f"OBJECT_{objtype}"),
                            behavior=DropBehavior.DROP_RESTRICT, missing_ok=False,
                            concurrent=concurrent)

    @staticmethod
    def alter_drop(table: tuple[str, ...], subtype: str, name: str) -> Any:
        cmd = ast.AlterTableCmd(subtype=getattr(AlterTableType, subtype), name=name,
                                behavior=DropBehavior.DROP_RESTRICT)
        relation = ast.RangeVar(schemaname=table[0] if len(table) > 1 else None,
                                relname=table[-1], inh=True, relpersistence="p")
        return ast.AlterTableStmt(relation=relation, cmds=(cmd,), objtype=ObjectType.OBJECT_TABLE)

    @staticmethod
    def strs(names: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(ast.String(sval=n) for n in names)

    # --- statements --------------------------------------------------------------------------
    def statement(self, node: Any, line: int, schema: str | None = None) -> None:
        kind = type(node).__name__
        handler = getattr(self, f"on_{kind}", None)
        if handler is not None:
            handler(node, line, schema)
        elif kind in ("VariableSetStmt", "VacuumStmt", "TransactionStmt"):
            pass  # no lasting effect on the schema or the data
        elif kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt",
                      "TruncateStmt") and self.targets_own(node, schema):
            pass  # the rows of a table this file creates go with it
        else:
            self.note(line, _label(node))

    def targets_own(self, node: Any, schema: str | None) -> bool:
        rels = node.relations if type(node).__name__ == "TruncateStmt" else [node.relation]
        return all(r is not None and self.find(_key("rel", _names(r, schema))) for r in rels)

    def sequence_options(self, node: Any, schema: str | None) -> bool:
        """False when the sequence is not this file's. OWNED BY a column of this file's
        table: the sequence goes with the table (DROP TABLE drops owned sequences)."""
        seq = self.find(_key("rel", _names(node.sequence, schema)))
        if seq is None:
            return False
        for opt in node.options or ():
            if opt.defname == "owned_by":
                parts = _strings(opt.arg)
                seq.owner = self.find(_key("rel", parts[:-1])) if len(parts) > 1 else None
        return True

    def on_CreateSchemaStmt(self, node: Any, line: int, schema: str | None) -> None:
        name = node.schemaname or node.authrole.rolename
        self.add(Created(("schema", "", name), self.drop("SCHEMA", self.strs((name,))), line,
                         "CREATE SCHEMA", review=self.if_not_exists(node)))
        for element in node.schemaElts or ():
            self.statement(element, line, name)

    def relation(self, node: Any, rangevar: Any, objtype: str, what: str, line: int,
                 schema: str | None) -> None:
        names = _names(rangevar, schema)
        review = self.if_not_exists(node) or self.or_replace(node)
        self.add(Created(_key("rel", names), self.drop(objtype, (self.strs(names),)), line,
                         what, review=review))

    def on_CreateStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.relation(node, node.relation, "TABLE", "CREATE TABLE", line, schema)

    def on_ViewStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.relation(node, node.view, "VIEW", "CREATE VIEW", line, schema)

    def on_CreateTableAsStmt(self, node: Any, line: int, schema: str | None) -> None:
        matview = node.objtype.name == "OBJECT_MATVIEW"
        self.relation(node, node.into.rel, "MATVIEW" if matview else "TABLE",
                      "CREATE MATERIALIZED VIEW" if matview else "CREATE TABLE AS", line, schema)

    def on_SelectStmt(self, node: Any, line: int, schema: str | None) -> None:
        if node.intoClause is None:
            self.note(line, "SELECT", "it may change data through a function; check it")
        else:
            self.relation(node, node.intoClause.rel, "TABLE", "SELECT INTO", line, schema)

    def on_CreateSeqStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.relation(node, node.sequence, "SEQUENCE", "CREATE SEQUENCE", line, schema)
        self.sequence_options(node, schema)

    def on_AlterSeqStmt(self, node: Any, line: int, schema: str | None) -> None:
        if not self.sequence_options(node, schema):
            self.note(line, "ALTER SEQUENCE")

    def on_IndexStmt(self, node: Any, line: int, schema: str | None) -> None:
        table = _names(node.relation, schema)
        owner = self.find(_key("rel", table))
        if node.idxname is None and owner is None:
            self.note(line, "CREATE INDEX without a name",
                      "name the index in the forward file, or write the DROP by hand")
            return
        names = (*table[:-1], node.idxname or "")
        drop = self.drop("INDEX", (self.strs(names),), concurrent=node.concurrent)
        self.add(Created(_key("rel", names), drop if node.idxname else None, line,
                         "CREATE INDEX", owner=owner, review=self.if_not_exists(node),
                         concurrent=bool(node.concurrent)))

    def on_CreateTrigStmt(self, node: Any, line: int, schema: str | None) -> None:
        table = _names(node.relation, schema)
        drop = self.drop("TRIGGER", (self.strs((*table, node.trigname)),))
        self.add(Created(None, drop, line, "CREATE TRIGGER",
                         owner=self.find(_key("rel", table)), review=self.or_replace(node)),
                 [_key("func", _strings(node.funcname))])

    def on_CreatePolicyStmt(self, node: Any, line: int, schema: str | None) -> None:
        table = _names(node.table, schema)
        drop = self.drop("POLICY", (self.strs((*table, node.policy_name)),))
        self.add(Created(None, drop, line, "CREATE POLICY", owner=self.find(_key("rel", table))))

    def on_RuleStmt(self, node: Any, line: int, schema: str | None) -> None:
        table = _names(node.relation, schema)
        drop = self.drop("RULE", (self.strs((*table, node.rulename)),))
        self.add(Created(None, drop, line, "CREATE RULE", owner=self.find(_key("rel", table)),
                         review=self.or_replace(node)))

    def type_(self, names: tuple[str, ...], objtype: str, what: str, line: int) -> None:
        drop = self.drop(objtype, (ast.TypeName(names=self.strs(names), typemod=-1),))
        self.add(Created(_key("type", names), drop, line, what))

    def on_CreateEnumStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.type_(_strings(node.typeName), "TYPE", "CREATE TYPE … AS ENUM", line)

    def on_CreateRangeStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.type_(_strings(node.typeName), "TYPE", "CREATE TYPE … AS RANGE", line)

    def on_CompositeTypeStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.type_(_names(node.typevar, schema), "TYPE", "CREATE TYPE", line)

    def on_CreateDomainStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.type_(_strings(node.domainname), "DOMAIN", "CREATE DOMAIN", line)

    def on_AlterEnumStmt(self, node: Any, line: int, schema: str | None) -> None:
        if not self.find(_key("type", _strings(node.typeName))):
            self.note(line, _label(node))

    def on_CreateFunctionStmt(self, node: Any, line: int, schema: str | None) -> None:
        mode = FunctionParameterMode
        params = [p for p in node.parameters or () if p.mode != mode.FUNC_PARAM_TABLE]
        if node.is_procedure:  # a procedure's signature includes its OUT arguments
            target = ast.ObjectWithArgs(objname=node.funcname, objfuncargs=tuple(
                ast.FunctionParameter(argType=p.argType, mode=p.mode) for p in params))
        else:  # a function is identified by its input arguments only
            target = ast.ObjectWithArgs(objname=node.funcname, objargs=tuple(
                p.argType for p in params if p.mode != mode.FUNC_PARAM_OUT))
        objtype, what = ("PROCEDURE", "CREATE PROCEDURE") if node.is_procedure else (
            "FUNCTION", "CREATE FUNCTION")
        self.add(Created(_key("func", _strings(node.funcname)), self.drop(objtype, (target,)),
                         line, what, review=self.or_replace(node)))

    def on_CreateExtensionStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.add(Created(("ext", "", node.extname), self.drop("EXTENSION", self.strs(
            (node.extname,))), line, "CREATE EXTENSION", review=self.if_not_exists(node)))

    def on_CreateEventTrigStmt(self, node: Any, line: int, schema: str | None) -> None:
        self.add(Created(None, self.drop("EVENT_TRIGGER", self.strs((node.trigname,))), line,
                         "CREATE EVENT TRIGGER"))

    def on_AlterTableStmt(self, node: Any, line: int, schema: str | None) -> None:
        table = _names(node.relation, schema)
        owner = self.find(_key("rel", table))
        for cmd in node.cmds:
            subtype = cmd.subtype.name
            what = f"ALTER {_objtype(node.objtype)} … " + _SUBCOMMANDS.get(
                subtype, _camel(subtype.removeprefix("AT_")))
            if subtype == "AT_AddColumn":
                name = cmd.def_.colname
                drop = self.alter_drop(table, "AT_DropColumn", name)
                self.add(Created(None, drop, line, "ALTER TABLE … ADD COLUMN", owner=owner,
                                 review=self.if_not_exists(cmd)), self.refs(cmd.def_))
            elif subtype == "AT_AddConstraint":
                name = cmd.def_.conname
                drop = self.alter_drop(table, "AT_DropConstraint", name) if name else None
                if drop is None and owner is None:
                    self.note(line, "ALTER TABLE … ADD CONSTRAINT without a name",
                              "name the constraint in the forward file, or write the reverse "
                              "by hand")
                    continue
                self.add(Created(None, drop, line, "ALTER TABLE … ADD CONSTRAINT", owner=owner),
                         self.refs(cmd.def_))
            elif owner is None and subtype != "AT_ValidateConstraint":
                self.note(line, what)

    def on_RenameStmt(self, node: Any, line: int, schema: str | None) -> None:
        own = node.relation and self.find(_key("rel", _names(node.relation, schema)))
        if not own:
            self.note(line, _label(node))
        elif node.renameType.name != "OBJECT_COLUMN" and node.subname is None:
            # The relation itself is renamed: drop it by its new name (in the same schema).
            assert own.key is not None  # find() matches by key
            own.key = (*own.key[:2], node.newname)
            if own.drop is not None:
                own.drop.objects = (self.strs((*_strings(own.drop.objects[0])[:-1],
                                               node.newname)),)

    def on_CommentStmt(self, node: Any, line: int, schema: str | None) -> None:
        if not self.own_object(node.objtype, node.object):
            self.note(line, "COMMENT ON " + _objtype(node.objtype),
                      "restore the previous comment by hand")

    def on_GrantStmt(self, node: Any, line: int, schema: str | None) -> None:
        if node.targtype.name != "ACL_TARGET_OBJECT" or not all(
                self.own_object(node.objtype, obj) for obj in node.objects):
            self.note(line, _label(node))

    def on_DropStmt(self, node: Any, line: int, schema: str | None) -> None:
        part = node.removeType.name in _PARTS
        kept = []
        for obj in node.objects:
            found = self.own_object(node.removeType, obj)
            if found is None:
                kept.append(obj)
            elif not part:  # a trigger, policy or rule of this file's table goes with it
                found.gone = True  # created and dropped here: nothing left to roll back
        if kept:
            self.note(line, _label(node), "recreate what it dropped by hand")

    def own_object(self, objtype: Any, obj: Any) -> Created | None:
        """The object of this file that a COMMENT, GRANT or DROP names, if any."""
        word = objtype.name.removeprefix("OBJECT_")
        kind = type(obj).__name__
        if kind == "String":
            names: tuple[str, ...] = (obj.sval,)
        elif kind == "ObjectWithArgs":
            names = _strings(obj.objname)
        elif kind == "TypeName":
            names = _strings(obj.names)
        elif kind == "RangeVar":
            names = _names(obj, None)
        else:
            names = _strings(obj)
        space = {"SCHEMA": "schema", "EXTENSION": "ext", "FUNCTION": "func", "PROCEDURE": "func",
                 "ROUTINE": "func", "TYPE": "type", "DOMAIN": "type"}.get(word, "rel")
        if objtype.name in _PARTS:
            names = names[:-1]  # the part goes with its table
        return self.find(_key(space, names)) if names else None

    # --- helpers -----------------------------------------------------------------------------
    @staticmethod
    def refs(node: Any) -> list[Key]:
        """The types and tables a column or constraint definition refers to by name."""
        found: list[Key] = []
        kind = type(node).__name__
        if kind == "ColumnDef":
            if node.typeName is not None:
                found.append(_key("type", _strings(node.typeName.names)))
            for constraint in node.constraints or ():
                found += Inverter.refs(constraint)
        elif kind == "Constraint" and node.pktable is not None:
            found.append(_key("rel", _names(node.pktable, None)))
        return found

    def if_not_exists(self, node: Any) -> str:
        # In a no-transaction file IF NOT EXISTS is what makes a re-run after a failure
        # safe (the migration guide asks for it), not a sign the object may predate it.
        if not self.transactional and type(node).__name__ != "CreateExtensionStmt":
            return ""
        if getattr(node, "if_not_exists", False) or getattr(node, "missing_ok", False):
            return "IF NOT EXISTS: drop it only if this migration created it"
        return ""

    @staticmethod
    def or_replace(node: Any) -> str:
        if getattr(node, "replace", False):
            return "OR REPLACE: if it replaced an older definition, restore that instead"
        return ""
