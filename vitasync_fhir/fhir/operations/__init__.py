"""FHIR operations ($name), one module per operation.

Each module listed in MODULES exposes `router` (an APIRouter mounted under /fhir before the plain
REST routes, so `/Patient/$export` is not read as the id "$export") and `OPERATIONS`, the
CapabilityStatement `rest.operation` entries it implements (name and definition canonical URL),
and may expose `TYPE_OPERATIONS` ({type: entries}: `rest.resource.operation`).
Adding an operation is a module and a line here.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from fastapi import APIRouter

MODULES: tuple[str, ...] = ("everything", "export", "validate", "print")


def modules() -> list[ModuleType]:
    return [import_module(f"{__name__}.{name}") for name in MODULES]


def routers() -> list[APIRouter]:
    return [module.router for module in modules()]


def capability_entries() -> list[dict]:
    """`rest.operation` of the CapabilityStatement: every operation any module serves."""
    entries: dict[str, dict] = {}
    for module in modules():
        for entry in module.OPERATIONS:
            entries.setdefault(entry["name"], entry)
    return [entries[name] for name in sorted(entries)]


def type_capability_entries() -> dict[str, list[dict]]:
    """`rest.resource.operation` by resource type: the operations served on a type."""
    entries: dict[str, list[dict]] = {}
    for module in modules():
        for resource_type, found in getattr(module, "TYPE_OPERATIONS", {}).items():
            entries.setdefault(resource_type, []).extend(found)
    return entries
