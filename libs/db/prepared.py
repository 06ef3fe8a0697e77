"""Which statements PostgreSQL keeps prepared: those that pin rows by a key.

Unprepared, every statement is parsed and planned again at each run: in a benchmark run
that enrolled 1,000 nodes and created and deleted 1,000 instances, planning alone took
8.3 s of PostgreSQL's 21.7 s of statement time (pg_stat_statements), most of it for
statements that read or change one node, port or instance by its id. Prepared once per
connection, such a statement soon runs a generic plan, the same for any parameters, with
no planning at all.

A generic plan is the wrong one for a statement whose best plan depends on its
parameters (the scheduler's candidates ran twice as long with one; a list filtered by a
status would get one plan for a rare status and a common one alike), so psycopg's
automatic preparation stays off and only a statement whose plan cannot depend on them is
prepared:

- an INSERT;
- a SELECT, UPDATE or DELETE whose WHERE clause requires a primary-key or unique column
  to equal a parameter (``node.id = $1 AND ...``): the key's index finds its row
  whatever the values;
- a statement built with ``.execution_options(tetsu_prepare=True)`` (or False to keep
  one of the above unprepared).

The choice is made once per SQL text, from the statement SQLAlchemy compiled it from
(so an option on one statement decides for every statement of the same text).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BindParameter, Column, event
from sqlalchemy.engine import Engine, ExecutionContext
from sqlalchemy.sql import operators
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import BinaryExpression, BooleanClauseList, ClauseElement
from sqlalchemy.sql.selectable import Select

#: The execution option that decides for one statement (see the module's docstring).
PREPARE = "tetsu_prepare"

#: psycopg's ``prepare_threshold`` for these engines: the runs after which it would prepare
#: a statement by itself; never, as every statement with parameters is run with its
#: choice (psycopg's None would refuse to prepare any).
NEVER_BY_ITSELF = 2**31 - 1

#: SQL texts whose choice is remembered; past this many the memory starts over (the
#: services run a few hundred kinds of statement).
REMEMBERED = 4096


def prepare_pinned_statements(engine: Engine) -> None:
    """Make ``engine`` (PostgreSQL, psycopg) prepare the statements that pin rows by a
    key (:func:`pins_rows`) and run every other one unprepared."""
    decided: dict[str, bool] = {}

    @event.listens_for(engine, "do_execute")
    def _execute(
        cursor: Any, statement: str, parameters: Any, context: ExecutionContext
    ) -> bool | None:
        prepare = decided.get(statement)
        if prepare is None:
            if len(decided) >= REMEMBERED:
                decided.clear()
            prepare = decided[statement] = pins_rows(context)
        cursor.execute(statement, parameters, prepare=prepare)
        return True  # run here, instead of by SQLAlchemy


def pins_rows(context: ExecutionContext) -> bool:
    """Whether the statement being run should be prepared (see the module's docstring)."""
    chosen = context.execution_options.get(PREPARE)
    if chosen is not None:
        return bool(chosen)
    compiled = getattr(context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    if isinstance(statement, Insert):
        return True
    if isinstance(statement, Select | Update | Delete):
        return statement.whereclause is not None and any(
            _key_equals_parameter(term) for term in _conjuncts(statement.whereclause)
        )
    return False  # text, DDL, a compound SELECT...


def _conjuncts(clause: ClauseElement) -> list[ClauseElement]:
    """The terms ANDed at the top of a WHERE clause."""
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        return [term for part in clause.clauses for term in _conjuncts(part)]
    return [clause]


def _key_equals_parameter(term: ClauseElement) -> bool:
    if not isinstance(term, BinaryExpression) or term.operator is not operators.eq:
        return False
    for column, value in ((term.left, term.right), (term.right, term.left)):
        if (
            isinstance(column, Column)
            and (column.primary_key or column.unique)
            and isinstance(value, BindParameter)
        ):
            return True
    return False
