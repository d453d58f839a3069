"""Sorting on indexed parameters with ties and missing values, every page walked forward and back,
and the shape of the statement that pages them. Each test makes its own data on a fresh SQLite or
PostgreSQL database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest
from factories import create
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

BASE = "http://testserver"

# (family names, gender, birthDate): ties on every key, resources without one, and patients with
# two names (ascending uses the smallest, descending the largest).
PEOPLE: list[tuple[list[str], str | None, str | None]] = [
    (["Smith"], "female", "1980-01-01"),
    (["Smith"], "male", "1980-01-01"),
    (["Smith"], None, "1975-06-30"),
    (["Adams"], "female", None),
    (["Baker", "Young"], "male", "1990-12-31"),
    (["Young"], "female", "1980-01-01"),
    ([], "other", "1975-06-30"),
    ([], None, None),
    (["Clark"], "male", None),
    (["Adams", "Clark"], "female", "1990-12-31"),
    (["Young"], None, "2001-02-03"),
    ([], "female", "1980-01-01"),
    (["Baker"], "other", None),
]
SORTS = (
    "gender",
    "-gender",
    "family",
    "-family",
    "birthdate",
    "-birthdate",
    "gender,-family",
    "-gender,birthdate,family",
)


def person(families: list[str], gender: str | None, born: str | None) -> dict:
    resource: dict = {"resourceType": "Patient", "name": [{"family": f} for f in families]}
    if gender:
        resource["gender"] = gender
    if born:
        resource["birthDate"] = born
    return {k: v for k, v in resource.items() if v}


def sort_value(resource: dict, code: str, descending: bool) -> str | None:
    if code == "gender":
        return resource.get("gender")
    if code == "birthdate":
        return resource.get("birthDate")
    names = [n["family"].casefold() for n in resource.get("name", [])]
    if not names:
        return None
    return max(names) if descending else min(names)


def expected(resources: list[dict], sort: str) -> list[str]:
    """The order the specification asks: each key in its direction with missing values last, ties
    broken by id in the direction of the last key."""
    keys = [(k.lstrip("-"), k.startswith("-")) for k in sort.split(",")]
    ordered = sorted(resources, key=lambda r: r["id"], reverse=keys[-1][1])
    for code, descending in reversed(keys):  # stable sorts, the least significant key first
        present = [r for r in ordered if sort_value(r, code, descending) is not None]
        missing = [r for r in ordered if sort_value(r, code, descending) is None]
        present.sort(key=lambda r: sort_value(r, code, descending), reverse=descending)
        ordered = present + missing
    return [r["id"] for r in ordered]


def get(client: TestClient, url: str, **params: str) -> dict:
    answer = client.get(url.removeprefix(BASE), params=params or None)
    assert answer.status_code == 200, answer.text
    return answer.json()


def link(bundle: dict, relation: str) -> str | None:
    return next((x["url"] for x in bundle.get("link", []) if x["relation"] == relation), None)


def ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def walk(client: TestClient, first: dict, relation: str) -> list[dict]:
    pages = [first]
    while (url := link(pages[-1], relation)) is not None:
        pages.append(get(client, url))
    return pages


def test_sorted_pages_walk_forward_and_back_in_order(client: TestClient) -> None:
    people = [create(client, person(*p)) for p in PEOPLE]
    for sort in SORTS:
        first = get(client, "/fhir/Patient", _sort=sort, _count="3")
        forward = walk(client, first, "next")
        assert [i for page in forward for i in ids(page)] == expected(people, sort), sort
        assert all(len(ids(page)) == 3 for page in forward[:-1]), sort
        assert link(first, "previous") is None, sort
        back = walk(client, forward[-1], "previous")
        assert [ids(page) for page in reversed(back)] == [ids(page) for page in forward], sort


def test_one_row_pages_cross_every_tie_and_gap(client: TestClient) -> None:
    people = [create(client, person(*p)) for p in PEOPLE]
    for sort in ("family", "-birthdate"):
        forward = walk(client, get(client, "/fhir/Patient", _sort=sort, _count="1"), "next")
        assert [i for page in forward for i in ids(page)] == expected(people, sort), sort
        back = walk(client, forward[-1], "previous")
        assert [i for page in reversed(back) for i in ids(page)] == expected(people, sort), sort


@contextmanager
def statements(app: FastAPI) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements the app runs inside the block, with their parameters."""
    seen: list[tuple[str, Any]] = []
    engine = app.state.db.engine.sync_engine

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def page_statements(seen: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(s, p) for s, p in seen if "ORDER BY" in s and "FROM search_token" in s]


@pytest.mark.parametrize("sort", ["gender", "-gender"])
def test_a_sort_value_is_looked_up_once_a_row_by_its_resource(
    client: TestClient, app: FastAPI, sort: str
) -> None:
    """Thousands of rows sorted in seconds, not minutes: the lookup of a row's sort value appears
    once in a page's statement (the keyset's OR chain repeated it), and on SQLite it goes by the
    resource (type, id, param), not along the index of the values, which SQLite without
    statistics preferred for min() and read the whole parameter for every row."""
    for p in PEOPLE[:4]:
        create(client, person(*p))
    with statements(app) as seen:
        first = get(client, "/fhir/Patient", _sort=sort, _count="1")
        get(client, link(first, "next") or "")
    pages = page_statements(seen)
    assert len(pages) == 2
    for statement, _ in pages:
        assert statement.count("FROM search_token") == 1, statement
    if app.state.db.sqlite:
        for statement, parameters in pages:
            lookups = [row for row in explain(app, statement, parameters) if "search_token" in row]
            assert lookups and all("resource_id=?" in row for row in lookups), lookups


def explain(app: FastAPI, statement: str, parameters: Any) -> list[str]:
    path = app.state.db.url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
    return [str(row[-1]) for row in rows]
