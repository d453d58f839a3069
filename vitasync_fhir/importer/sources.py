"""What an import reads: files, folders and archives, cut into units of one transaction each.

Everything streams: an archive is read member by member (`tarfile` stream mode, nothing unpacked to
disk), an NDJSON file line by line in runs of `batch_size`. Only one Bundle or one run of lines is
held in memory at a time, so memory does not grow with the input.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

ARCHIVES = (".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
DOCUMENTS = (".json", ".ndjson")
# A conditional reference ("Patient?identifier=...") or a conditional update/delete url.
CONDITIONAL = re.compile(rb'"(?:reference|url)"\s*:\s*"[A-Za-z]+\?')


@dataclass(frozen=True, slots=True)
class Place:
    """Where a unit comes from: a file, or a member of an archive."""

    source: str
    member: str = ""

    def __str__(self) -> str:
        return f"{self.source}:{self.member}" if self.member else self.source


@dataclass(slots=True)
class Unit:
    """Work that loads in one transaction, recorded under (place, key, sha256) when done.

    `bundle` is a transaction (or one-entry batch) Bundle, ready for fhir/bundles.py.
    `lines` are NDJSON lines (number, text) turned into a Bundle by the loader.
    """

    place: Place
    key: str
    sha256: str
    resources: int
    bundle: dict | None = None
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    # Conditional creates and references look at what other units wrote: such a unit runs alone.
    exclusive: bool = False


@dataclass(frozen=True, slots=True)
class Problem:
    """A file, member or line that cannot become a unit, with the reason."""

    place: Place
    key: str
    reason: str


@dataclass(slots=True)
class Progress:
    """How far through the input bytes (on disk, compressed) the reader is."""

    total: int = 0
    done: int = 0


def conditional(data: bytes) -> bool:
    return b"ifNoneExist" in data or CONDITIONAL.search(data) is not None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVES)


def is_document(name: str) -> bool:
    return name.lower().endswith(DOCUMENTS)


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[Problem]]:
    """The files to read, folders walked in name order; problems for what cannot be read."""
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and (is_archive(p) or is_document(p.name))
            )
        elif not path.exists():
            problems.append(Problem(Place(str(path)), "", "no such file or folder"))
        elif is_archive(path) or is_document(path.name):
            files.append(path)
        else:
            problems.append(
                Problem(Place(str(path)), "", "not a .json, .ndjson, .tar.xz or .tar.gz file")
            )
    return [f.resolve() for f in files], problems


def read(files: list[Path], *, batch_size: int, progress: Progress) -> Iterator[Unit | Problem]:
    """Every unit of every file, in order."""
    progress.total = sum(f.stat().st_size for f in files)
    for path in files:
        start = progress.done
        try:
            if is_archive(path):
                yield from _archive(path, batch_size=batch_size, progress=progress)
            else:
                with path.open("rb") as stream:
                    yield from _document(Place(str(path)), stream, batch_size=batch_size)
        except (OSError, tarfile.TarError, EOFError) as error:
            yield Problem(Place(str(path)), "", f"cannot read: {error}")
        progress.done = start + path.stat().st_size


def _archive(path: Path, *, batch_size: int, progress: Progress) -> Iterator[Unit | Problem]:
    start = progress.done
    with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        for member in archive:
            progress.done = start + raw.tell()
            if not member.isfile() or not is_document(member.name):
                continue
            stream = archive.extractfile(member)
            if stream is None:
                continue
            # Stream mode: the member must be consumed before the next one is read.
            yield from _document(Place(str(path), member.name), stream, batch_size=batch_size)


def _document(place: Place, stream: IO[bytes], *, batch_size: int) -> Iterator[Unit | Problem]:
    name = place.member or place.source
    if name.lower().endswith(".ndjson"):
        yield from _ndjson(place, stream, batch_size=batch_size)
    else:
        yield from _json(place, stream.read())


def _json(place: Place, data: bytes) -> Iterator[Unit | Problem]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        yield Problem(place, "", f"not valid JSON: {error}")
        return
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        yield Problem(place, "", "not a FHIR resource (no resourceType)")
        return
    if document["resourceType"] != "Bundle":
        yield Unit(
            place,
            "resource",
            sha256(data),
            1,
            bundle=transaction_of([document]),
            exclusive=conditional(data),
        )
        return
    kind = document.get("type")
    entries = document.get("entry") or []
    if kind == "transaction":
        yield Unit(
            place,
            "bundle",
            sha256(data),
            len(entries),
            bundle=document,
            exclusive=conditional(data),
        )
    elif kind == "batch" and isinstance(entries, list):
        # A batch applies entry by entry, so each entry is a unit of its own.
        for index, entry in enumerate(entries):
            single = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
            text = orjson.dumps(entry)
            yield Unit(
                place, f"entry {index}", sha256(text), 1, bundle=single, exclusive=conditional(text)
            )
    else:
        yield Problem(place, "", f"a Bundle of type {kind!r}; import takes transaction or batch")


def _ndjson(place: Place, stream: IO[bytes], *, batch_size: int) -> Iterator[Unit | Problem]:
    run: list[tuple[int, bytes]] = []
    for number, line in enumerate(stream, start=1):
        line = line.strip()
        if not line:
            continue
        run.append((number, line))
        if len(run) >= batch_size:
            yield lines_unit(place, run)
            run = []
    if run:
        yield lines_unit(place, run)


def lines_unit(place: Place, run: list[tuple[int, bytes]]) -> Unit:
    first, last = run[0][0], run[-1][0]
    key = f"line {first}" if first == last else f"lines {first}-{last}"
    text = b"\n".join(line for _, line in run)
    return Unit(place, key, sha256(text), len(run), lines=run, exclusive=conditional(text))


def transaction_of(resources: list[dict]) -> dict:
    """A transaction Bundle writing `resources`: PUT where they carry an id (so it is kept and a
    reload changes nothing), POST where they do not."""
    entries = []
    for resource in resources:
        kind, rid = resource.get("resourceType"), resource.get("id")
        url = f"{kind}/{rid}" if isinstance(rid, str) and rid else f"{kind}"
        method = "PUT" if url != kind else "POST"
        entries.append({"resource": resource, "request": {"method": method, "url": url}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
