"""Element paths in the mapping files, and reading and writing JSON along them.

A path is dot-separated steps; a step is a name, optionally with `[n]` (the n-th item of an array),
`[key=value]` (the first item of an array whose `key` equals `value`, or one of `a|b`, created with
that key when written), `[key?=a|b]` (the first item whose `key` is one of them or is left out,
created without it), `[key:Type]` (the first item whose `key` is a Reference to a resource of that
type, created empty when written: the rest of the path gives it the reference) or `[:Type]` (the
first item that is itself such a Reference): `dosageInstruction[0].text`,
`code.coding[system=http://loinc.org].code`, `name[use?=official|usual].family`,
`participant[actor:Patient].actor`, `performer[:Practitioner]`.

Selecting by a field rather than by position finds the item a partner meant, wherever it stands
in the array: the name a person goes by, not a maiden name listed first; the doctor among the
participants, not an escort.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STEP = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\[(?P<index>\d+)\]|\[(?P<key>[A-Za-z]+)(?P<absent>\?)?=(?P<value>[^\]|]+(?:\|[^\]|]+)*)\]"
    r"|\[(?P<ref>[A-Za-z]*):(?P<type>[A-Z][A-Za-z]+)\])?$"
)


class PathError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    index: int | None = None
    key: str | None = None
    value: str | None = None
    holds: str | None = None  # [key:Type]: the resource type `key` refers to
    or_absent: bool = False  # [key?=value]: an item without `key` matches too

    @property
    def is_array(self) -> bool:
        return self.index is not None or self.key is not None or self.holds is not None

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self.value.split("|")) if self.value is not None else ()


def _split(path: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in path:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse(path: str) -> tuple[Step, ...]:
    steps = []
    for text in _split(path):
        match = _STEP.match(text)
        if not match:
            raise PathError(
                f"{path!r}: step {text!r} is not name, name[n], name[key=value], "
                "name[key?=value], name[key:Type] or name[:Type]"
            )
        index = match.group("index")
        steps.append(
            Step(
                match.group("name"),
                int(index) if index else None,
                match.group("key") or match.group("ref") or None,
                match.group("value"),
                match.group("type"),
                bool(match.group("absent")),
            )
        )
    return tuple(steps)


def reference_type(reference: object) -> str | None:
    """The resource type a Reference points at: `Patient` for `Patient/1`, an absolute or a
    versioned URL of one, or a Reference whose `type` says so; None for a contained `#id`."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if isinstance(text, str):
        parts = text.split("/_history/")[0].split("/")
        return parts[-2] if len(parts) >= 2 and parts[-1] else None
    kind = reference.get("type")
    return kind if isinstance(kind, str) else None


def reference_id(reference: object, resource_type: str) -> str | None:
    """The id a Reference gives when it points at a resource of this type, else None."""
    if reference_type(reference) != resource_type:
        return None
    text = reference.get("reference")  # type: ignore[union-attr]
    return text.split("/_history/")[0].rsplit("/", 1)[-1] if isinstance(text, str) else None


def _matches(item: object, step: Step) -> bool:
    if step.holds is not None and step.key is None:
        return reference_type(item) == step.holds
    if not isinstance(item, dict):
        return False
    if step.holds is not None:
        return reference_type(item.get(step.key)) == step.holds  # type: ignore[arg-type]
    if step.or_absent and step.key not in item:
        return True
    return item.get(step.key) in step.values  # type: ignore[arg-type]


def _item(items: list, step: Step, *, create: bool) -> dict | None:
    if step.index is not None:
        while create and len(items) <= step.index:
            items.append({})
        return items[step.index] if step.index < len(items) else None
    for item in items:
        if _matches(item, step):
            return item
    if not create:
        return None
    item = {} if step.holds is not None or step.or_absent else {step.key: step.values[0]}
    items.append(item)
    return item


def get(document: dict, steps: tuple[Step, ...]) -> object:
    node: object = document
    for step in steps:
        if not isinstance(node, dict):
            return None
        node = node.get(step.name)
        if step.is_array:
            node = _item(node, step, create=False) if isinstance(node, list) else None
    return node


def put(document: dict, steps: tuple[Step, ...], value: object) -> None:
    node = document
    for position, step in enumerate(steps):
        last = position == len(steps) - 1
        if step.is_array:
            items = node.setdefault(step.name, [])
            if last:
                _put_item(items, step, value)
                return
            child = _item(items, step, create=True)
            assert child is not None
            node = child
        elif last:
            node[step.name] = value
        else:
            node = node.setdefault(step.name, {})


def _put_item(items: list, step: Step, value: object) -> None:
    """Set the item a last step names: the n-th, or the Reference of a `[:Type]` step (in its
    place, or added after the others when there is none)."""
    if step.index is not None:
        while len(items) <= step.index:
            items.append(None)
        items[step.index] = value
        return
    if step.key is not None:
        raise PathError("a [key=value] or [key:Type] step cannot end a path")
    for position, item in enumerate(items):
        if _matches(item, step):
            items[position] = value
            return
    items.append(value)


def remove(document: dict, steps: tuple[Step, ...]) -> None:
    """Delete the element at the path, then whatever the deletion left empty.

    An array item found by `[key=value]` counts as empty once only its key is left, one found by
    `[key:Type]` once its reference is gone (it is no longer that type's item).
    """
    _remove(document, steps)


def _remove(node: dict, steps: tuple[Step, ...]) -> None:
    step, rest = steps[0], steps[1:]
    if step.name not in node:
        return
    if not step.is_array:
        if rest and isinstance(node[step.name], dict):
            _remove(node[step.name], rest)
            if not node[step.name]:
                del node[step.name]
        elif not rest:
            del node[step.name]
        return
    items = node[step.name]
    if not isinstance(items, list):
        return
    item = items[step.index] if step.index is not None and step.index < len(items) else None
    if step.index is None:
        item = _item(items, step, create=False)
    if item is None:
        return
    if rest and isinstance(item, dict):
        _remove(item, rest)
        leftover = {k for k in item if k != step.key}
        if not leftover or (step.holds is not None and step.key not in item):
            _delete(items, item)
    elif not rest:
        _delete(items, item)
    if not items:
        del node[step.name]


def _delete(items: list, item: object) -> None:
    """Delete this very item; list.remove would take the first equal one ("Ann" of Ann Ann)."""
    for position, candidate in enumerate(items):
        if candidate is item:
            del items[position]
            return
