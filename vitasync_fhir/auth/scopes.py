"""SMART on FHIR scopes (v2 `patient/Observation.rs`, v1 `user/*.read`) and their arithmetic.

A resource scope is (context, resource type or "*", letters), letters a subset of "cruds" kept in
that order: c create, r read (read, vread, instance history), u update (update, patch), d delete,
s search (search, type and system history). v1 suffixes translate: read -> rs, write -> cud,
* -> cruds. v2 scopes with a `?` query filter are not supported and grant nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LETTERS = "cruds"
CONTEXTS = ("patient", "user", "system")
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
# Scopes that name no resource: identity, launch context and refresh. Not online_access: its
# refresh token must end when the user is no longer signed in, and the authorization server
# keeps no sign-in session to tell (apps that ask for it get no refresh token).
OTHER = frozenset({"openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access"})
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.([a-z*]+)$")


def ordered(letters: Iterable[str]) -> str:
    chosen = set(letters)
    return "".join(letter for letter in LETTERS if letter in chosen)


@dataclass(frozen=True, order=True, slots=True)
class Scope:
    context: str
    resource_type: str
    letters: str

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.letters}"

    def applies_to(self, resource_type: str) -> bool:
        return self.resource_type in ("*", resource_type)

    def grants(self, resource_type: str, letter: str) -> bool:
        return self.applies_to(resource_type) and letter in self.letters


def parse_scope(text: str) -> Scope | None:
    """The resource scope `text` names, or None when it names none we support."""
    match = _SCOPE.match(text)
    if not match:
        return None
    context, resource_type, suffix = match.groups()
    if suffix in V1:
        return Scope(context, resource_type, V1[suffix])
    if not suffix or ordered(suffix) != suffix:
        return None  # v2 letters must be a subset of "cruds" in that order
    return Scope(context, resource_type, suffix)


@dataclass(frozen=True, slots=True)
class Requested:
    """A scope string split into resource scopes and the other (identity, launch) scopes."""

    resources: tuple[Scope, ...]
    other: frozenset[str]

    def text(self) -> str:
        return " ".join([*(str(s) for s in self.resources), *sorted(self.other)])


def parse(scope_text: str | None) -> Requested:
    """Every scope we understand in a space-separated scope string; the rest is dropped."""
    resources: list[Scope] = []
    other: set[str] = set()
    for word in (scope_text or "").split():
        if word in OTHER:
            other.add(word)
            continue
        scope = parse_scope(word)
        if scope is not None:
            resources.append(scope)
    return Requested(normalize(resources), frozenset(other))


def unknown(scope_text: str | None) -> list[str]:
    """The words of a scope string that name no scope we support (`parse` drops them)."""
    return [w for w in (scope_text or "").split() if w not in OTHER and parse_scope(w) is None]


def as_asked(granted: Requested, asked_text: str | None) -> str:
    """The granted scopes as text, each spelled as the client asked for it where it was granted
    whole: `patient/Observation.read` stays v1 for a v1 client, not `patient/Observation.rs`."""
    spelling: dict[Scope, str] = {}
    for word in (asked_text or "").split():
        scope = parse_scope(word)
        if scope is not None:
            spelling.setdefault(scope, word)
    words = [spelling.get(scope) or _v1_of_wildcard(scope, spelling) for scope in granted.resources]
    return " ".join([*words, *sorted(granted.other)])


def _v1_of_wildcard(scope: Scope, spelling: dict[Scope, str]) -> str:
    """A type granted out of a v1 wildcard (`patient/*.read`) in v1 too, with its letters."""
    asked = spelling.get(Scope(scope.context, "*", scope.letters), "")
    suffix = asked.rpartition(".")[2]
    if suffix in V1:
        return f"{scope.context}/{scope.resource_type}.{suffix}"
    return str(scope)


def normalize(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    """Merge scopes on the same (context, type) and drop those a wildcard already covers."""
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        merged.setdefault((scope.context, scope.resource_type), set()).update(scope.letters)
    result = []
    for (context, resource_type), letters in merged.items():
        wildcard = merged.get((context, "*"), set()) if resource_type != "*" else set()
        if letters <= wildcard:
            continue
        result.append(Scope(context, resource_type, ordered(letters)))
    return tuple(sorted(result))


def intersect(requested: Iterable[Scope], allowed: Iterable[Scope]) -> tuple[Scope, ...]:
    """What of `requested` the `allowed` scopes permit, type by type and letter by letter."""
    allowed = list(allowed)
    granted = []
    for want in requested:
        for have in allowed:
            if have.context != want.context:
                continue
            if want.resource_type == "*":
                resource_type = have.resource_type
            elif have.resource_type in ("*", want.resource_type):
                resource_type = want.resource_type
            else:
                continue
            letters = ordered(set(want.letters) & set(have.letters))
            if letters:
                granted.append(Scope(want.context, resource_type, letters))
    return normalize(granted)


def covered(scope: Scope, by: Iterable[Scope]) -> bool:
    """Whether every permission of `scope` is also given by the scopes `by`."""
    by = list(by)
    if scope.resource_type == "*":
        wildcards = [s for s in by if s.context == scope.context and s.resource_type == "*"]
        return set(scope.letters) <= set("".join(s.letters for s in wildcards))
    letters = {
        letter
        for s in by
        if s.context == scope.context and s.applies_to(scope.resource_type)
        for letter in s.letters
    }
    return set(scope.letters) <= letters


def subset(requested: Requested, granted: Requested) -> bool:
    """Whether `requested` asks for nothing beyond `granted` (no escalation on refresh)."""
    return requested.other <= granted.other and all(
        covered(scope, granted.resources) for scope in requested.resources
    )


def with_context(scopes: Iterable[Scope], contexts: Iterable[str]) -> tuple[Scope, ...]:
    keep = set(contexts)
    return tuple(s for s in scopes if s.context in keep)
