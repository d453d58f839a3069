"""The files an import's paths name: files as given, folders walked in name order.

Symlinked folders are followed, as a data folder is often put together from links. Each folder is
walked once by its resolved path: a link back to a folder being walked (a loop) or to one walked
already is skipped with a note, instead of never ending or loading the same files again.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vitasync_fhir.importer.sources import Note, Place, Problem, is_archive, is_document


@dataclass
class Inputs:
    files: list[Path] = field(default_factory=list)  # resolved, each once
    problems: list[Problem] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def expand(paths: Iterable[Path]) -> Inputs:
    """The files to read; problems for what cannot be read, notes for what holds nothing."""
    found = Inputs()
    walked: set[Path] = set()
    for path in paths:
        mode = _mode(path, found)
        if mode is None:
            continue
        if stat.S_ISDIR(mode):
            before = len(found.files)
            if _walk(path, walked, found) and len(found.files) == before:
                text = "no .json, .ndjson or archive file in it: nothing to import"
                found.notes.append(Note(Place(str(path)), text))
        elif is_archive(path) or is_document(path.name):
            found.files.append(path)
        else:
            reason = "not a .json, .ndjson, .tar.xz or .tar.gz file"
            found.problems.append(Problem(Place(str(path)), "", reason))
    found.files = list(dict.fromkeys(f.resolve() for f in found.files))
    return found


def _walk(folder: Path, walked: set[Path], found: Inputs) -> bool:
    """Add the folder's files, depth first in name order; False when it was walked already."""
    real = folder.resolve()
    if real in walked:
        text = f"skipped: it is {real}, which this import reads already"
        found.notes.append(Note(Place(str(folder)), text))
        return False
    walked.add(real)
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        found.problems.append(Problem(Place(str(folder)), "", f"cannot read: {error}"))
        return True
    for name in names:
        path = folder / name
        wanted = is_archive(path) or is_document(name)
        # Files of other kinds are passed over quietly, so only those we want report a problem.
        mode = _mode(path, found if wanted else None)
        if mode is not None and stat.S_ISDIR(mode):
            _walk(path, walked, found)
        elif mode is not None and stat.S_ISREG(mode) and wanted:
            found.files.append(path)
    return True


def _mode(path: Path, found: Inputs | None) -> int | None:
    """The file mode the path leads to, symlinks followed; None (and a problem) when none."""
    try:
        return path.stat().st_mode
    except OSError as error:
        if found is not None:
            found.problems.append(Problem(Place(str(path)), "", _unreachable(path, error)))
        return None


def _unreachable(path: Path, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "a symlink loop, which leads to no file or folder"
    if path.is_symlink():
        return f"a symlink to {os.readlink(path)}, which does not exist"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file or folder"
    return f"cannot read: {error}"
