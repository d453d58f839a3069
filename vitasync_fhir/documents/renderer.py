"""Prescription PDFs are drawn in a process of their own, not in the web worker.

WeasyPrint's fonts, Pango and layout caches stay resident in whatever process draws a PDF: in the
19:12 benchmark a web worker grew from 226 to 339 MiB once it had served PDFs. Each web worker
therefore hands its renders to one renderer process, spawned (it inherits nothing) on the first
PDF and replaced after `RENDERS_PER_PROCESS` documents, so its memory cannot creep either. If the
renderer dies mid-render, that request answers 503 and the next one starts a new renderer.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from vitasync_fhir.config import Settings
from vitasync_fhir.documents import pdf
from vitasync_fhir.fhir.outcomes import FhirError

RENDERS_PER_PROCESS = 200


def _draw(settings: Settings, values: dict) -> bytes | tuple[int, str, str]:
    """In the renderer: the PDF, or a refusal as (status, code, diagnostics) (FhirError itself
    does not survive pickling)."""
    try:
        return pdf.render(settings, values)
    except FhirError as error:
        return error.status, error.issues[0].code, error.issues[0].diagnostics


class Renderer:
    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    max_tasks_per_child=RENDERS_PER_PROCESS,
                )
            return self._executor

    async def render(self, settings: Settings, values: dict) -> bytes:
        executor = self._current()
        loop = asyncio.get_running_loop()
        try:
            drawn = await loop.run_in_executor(executor, _draw, settings, values)
        except BrokenProcessPool:
            with self._lock:
                if self._executor is executor:
                    self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            raise FhirError(503, "transient", "The PDF renderer stopped; retry shortly") from None
        if isinstance(drawn, tuple):
            raise FhirError(*drawn)
        return drawn

    @property
    def pid(self) -> int | None:
        """The renderer process of the moment; None before the first PDF."""
        processes = getattr(self._executor, "_processes", None) or {}
        return next(iter(processes), None)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
