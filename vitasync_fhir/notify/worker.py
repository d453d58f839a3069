"""Running the queue consumer: `vitasync-fhir worker`, or inside `serve` for the embedded default.

Both first relay the outbox (rows the queue lost while nothing was running, or sends a crash
interrupted whose lease has run out), then consume. The consumer also runs the periodic tasks: the
relay every minute and the reminder scan every `reminder_interval_minutes`. Each consumer process
schedules the periodic tasks itself, so with several `worker` processes they run once per process;
both are idempotent (row claiming, dedup keys), so that costs a few queries, never an e-mail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from huey.consumer import Consumer

from vitasync_fhir.config import Settings
from vitasync_fhir.notify.outbox import relay_pending
from vitasync_fhir.notify.queue import Queue, queue_for

log = logging.getLogger(__name__)

# How long an idle SQLite queue waits between polls at most (Redis blocks on BRPOP instead).
POLL_SECONDS = 1.0


class _HostedConsumer(Consumer):
    """A consumer inside another program (uvicorn, a test): that program owns the signals."""

    def _set_signal_handlers(self) -> None:
        pass


def relay_at_start(queue: Queue) -> None:
    """Hand over what was left behind; a failure here is logged, never fatal."""
    try:
        relay_pending(queue)
    except Exception as error:
        log.warning("start-up relay of the e-mail outbox failed: %s", error)
    try:
        from vitasync_fhir.subscriptions.tasks import relay_due

        relay_due(queue)
    except Exception as error:
        log.warning("start-up relay of subscription notifications failed: %s", error)


def run(settings: Settings, *, workers: int = 2) -> None:
    """Consume until SIGINT/SIGTERM (the `worker` command)."""
    queue = queue_for(settings)
    relay_at_start(queue)
    consumer = queue.huey.create_consumer(
        workers=workers, worker_type="thread", max_delay=POLL_SECONDS, shutdown_timeout=60
    )
    try:
        consumer.run()
    finally:
        queue.close()


@contextmanager
def hosted(settings: Settings, *, workers: int = 2, consume: bool = True) -> Iterator[Queue]:
    """Relay the outbox, and consume in background threads of this process until the block ends."""
    queue = queue_for(settings)
    relay_at_start(queue)
    consumer = None
    if consume:
        consumer = _HostedConsumer(
            queue.huey,
            workers=workers,
            worker_type="thread",
            max_delay=POLL_SECONDS,
            shutdown_timeout=settings.smtp_timeout * 2,
        )
        consumer.start()
    try:
        yield queue
    finally:
        if consumer is not None:
            consumer.stop(graceful=True)


@contextmanager
def serving(settings: Settings) -> Iterator[None]:
    """What `serve` wraps around uvicorn: a start-up relay, and for the embedded default (no Redis,
    `embedded_worker` on) a consumer in this process, so e-mail works with nothing else started."""
    consume = settings.embedded_worker and not settings.redis_url
    with hosted(settings, consume=consume):
        yield
