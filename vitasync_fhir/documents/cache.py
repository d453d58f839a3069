"""Rendered PDFs kept in memory, least recently used first out, within a byte budget.

The key names everything the bytes depend on: the type, id and versionId of every resource the
document shows, the template's text, the branding settings and the paper. An edited prescription
(or patient, or prescriber) has a new versionId, so it can never be served from an old entry.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable

import orjson


def key(*, versions: Iterable[tuple[str, str, int]], template: str, options: dict) -> str:
    parts = {"versions": sorted(versions), "template": template, "options": options}
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


class RenderCache:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> bytes | None:
        with self._lock:
            found = self._entries.get(name)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(name)
            self.hits += 1
            return found

    def put(self, name: str, data: bytes) -> None:
        if len(data) > self.limit:
            return
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self.size -= len(old)
            self._entries[name] = data
            self.size += len(data)
            while self.size > self.limit:
                _, dropped = self._entries.popitem(last=False)
                self.size -= len(dropped)
