"""AND and OR of many clauses as shallow trees.

SQLAlchemy renders `or_(a, b, c, ...)` as `a OR b OR c ...`, which SQLite parses into a tree as deep
as the list is long and refuses past a depth of 1000 ("Expression tree is too large"); PostgreSQL
gives up on deep trees too ("stack depth limit exceeded"). Long lists (a search with hundreds of
comma-separated values, or hundreds of parameters) are therefore split into halves, each in
parentheses, so the depth grows with the logarithm of the length. SQLAlchemy flattens nested
`or_` and even `Grouping`, hence the small construct below. Short lists render as they always did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, false, or_, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

FLAT = 64  # clauses joined in one flat list: depth this much at most per level


class _Parenthesized(ColumnElement[bool]):
    """A clause in parentheses that AND and OR keep whole."""

    inherit_cache = True
    _traverse_internals = [("element", InternalTraversal.dp_clauseelement)]
    type = Boolean()

    def __init__(self, element: ColumnElement[bool]) -> None:
        self.element = element


@compiles(_Parenthesized)
def _render(element: _Parenthesized, compiler: SQLCompiler, **kw: Any) -> str:
    return "(" + compiler.process(element.element, **kw) + ")"


def _shallow(
    join: Callable[..., ColumnElement[bool]], clauses: Sequence[ColumnElement[bool]]
) -> ColumnElement[bool]:
    if len(clauses) <= FLAT:
        return join(*clauses)
    middle = len(clauses) // 2
    return join(
        _Parenthesized(_shallow(join, clauses[:middle])),
        _Parenthesized(_shallow(join, clauses[middle:])),
    )


def any_of(clauses: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    """OR of `clauses` (an empty list is false)."""
    return _shallow(or_, clauses) if clauses else false()


def all_of(clauses: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    """AND of `clauses` (an empty list is true)."""
    return _shallow(and_, clauses) if clauses else true()
