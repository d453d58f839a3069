"""What an import reads: files and archives (inputs.py finds them), cut into units of one
transaction each.

Everything streams: an archive is read member by member (`tarfile` stream mode, nothing unpacked to
disk), an NDJSON file line by line in runs of `batch_size`. Only one Bundle or one run of lines is
held in memory at a time, so memory does not grow with the input.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterator
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
    # What the input calls entry 0 of `bundle`, for reasons: "" where the input has no Bundle
    # (an NDJSON line, a lone resource), `Bundle.entry[N]` for a batch's entry N; None where
    # `bundle` is the input's own.
    entry: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """A file, member or line that cannot become a unit, with the reason."""

    place: Place
    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth saying that is no failure: an empty folder, a folder reached twice."""

    place: Place
    text: str


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


def read(
    files: list[Path], *, batch_size: int, progress: Progress
) -> Iterator[Unit | Problem | Note]:
    """Every unit of every file, in order."""
    sizes = [_size(path) for path in files]
    progress.total = sum(sizes)
    for path, size in zip(files, sizes, strict=True):
        start = progress.done
        try:
            if is_archive(path):
                yield from _archive(path, batch_size=batch_size, progress=progress)
            else:
                with path.open("rb") as stream:
                    yield from _document(Place(str(path)), stream, batch_size=batch_size)
        except (OSError, tarfile.TarError, EOFError) as error:
            yield Problem(Place(str(path)), "", f"cannot read: {error}")
        progress.done = start + size


def _size(path: Path) -> int:
    """The file's size, measured once: a file can disappear while the import runs (opening it
    then says so as a problem of its own), and one deleted while open is still read to its end."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _archive(path: Path, *, batch_size: int, progress: Progress) -> Iterator[Unit | Problem | Note]:
    start = progress.done
    documents = 0
    with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        for member in archive:
            progress.done = start + raw.tell()
            if not member.isfile() or not is_document(member.name):
                continue
            stream = archive.extractfile(member)
            if stream is None:
                continue
            documents += 1
            # Stream mode: the member must be consumed before the next one is read.
            yield from _document(Place(str(path), member.name), stream, batch_size=batch_size)
    if not documents:
        yield Note(Place(str(path)), "no .json or .ndjson file in it: nothing to import")


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
            entry="",
        )
        return
    kind = document.get("type")
    entries = document.get("entry")
    if kind not in ("transaction", "batch"):
        yield Problem(place, "", f"a Bundle of type {kind!r}; import takes transaction or batch")
    elif entries is not None and not isinstance(entries, list):
        yield Problem(place, "", f"Bundle.entry is {_json_kind(entries)}, not a list")
    elif kind == "transaction":
        yield Unit(
            place,
            "bundle",
            sha256(data),
            len(entries or ()),
            bundle=document,
            exclusive=conditional(data),
        )
    else:
        # A batch applies entry by entry, so each entry is a unit of its own.
        for index, entry in enumerate(entries or ()):
            single = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
            text = orjson.dumps(entry)
            yield Unit(
                place,
                f"entry {index}",
                sha256(text),
                1,
                bundle=single,
                exclusive=conditional(text),
                entry=f"Bundle.entry[{index}]",
            )


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return str(value).lower()
    return "a number" if isinstance(value, int | float) else "null"


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
    # A run that fails is loaded line by line, so only a single line's reason is ever shown.
    entry = "" if len(run) == 1 else None
    return Unit(
        place, key, sha256(text), len(run), lines=run, exclusive=conditional(text), entry=entry
    )


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
