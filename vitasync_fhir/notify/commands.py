"""The notify commands of `vitasync-fhir`: worker, outbox-list, outbox-retry.

`cli.py` registers these functions; `python -m vitasync_fhir.notify.commands ...` runs them too.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from sqlalchemy import select

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import outbox as outbox_module
from vitasync_fhir.notify import worker as worker_module
from vitasync_fhir.notify.queue import queue_for
from vitasync_fhir.notify.tables import DEAD, PENDING, SENDING, STATUSES, UNCERTAIN, outbox

UNFINISHED = (PENDING, SENDING, DEAD, UNCERTAIN)


def worker(
    workers: Annotated[int, typer.Option(help="Worker threads")] = 2,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the background queue consumer: e-mails, the outbox relay and appointment reminders."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    where = settings.redis_url and "Redis" or f"SQLite in {settings.data_dir}"
    typer.echo(f"vitasync-fhir worker: queue {settings.queue_name!r} on {where}")
    worker_module.run(settings, workers=workers)


def outbox_list(
    status: Annotated[
        list[str] | None,
        typer.Option(help=f"Only these statuses ({', '.join(STATUSES)}); default: all unsent"),
    ] = None,
    limit: Annotated[int, typer.Option(help="Most rows shown")] = 100,
) -> None:
    """Show e-mails not (yet) sent: pending, sending, dead and uncertain, oldest first."""
    wanted = status or list(UNFINISHED)
    unknown = set(wanted) - set(STATUSES)
    if unknown:
        raise typer.BadParameter(f"unknown status {', '.join(sorted(unknown))}")
    queue = queue_for(Settings())
    query = (
        select(outbox)
        .where(outbox.c.status.in_(wanted))
        .order_by(outbox.c.created_at, outbox.c.id)
        .limit(limit)
    )
    with queue.engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        typer.echo("no e-mails in " + ", ".join(wanted))
        return
    typer.echo(f"{'id':>8}  {'status':<9}  {'kind':<23}  {'tries':>5}  {'next':<19}  recipient")
    for row in rows:
        due = row.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(
            f"{row.id:>8}  {row.status:<9}  {row.kind:<23}  {row.attempts:>5}  {due:<19}  "
            f"{row.recipient}"
        )
        if row.last_error and row.status in (DEAD, UNCERTAIN, PENDING):
            typer.echo(f"{'':>10}{row.last_error[:200]}")


def outbox_retry(
    outbox_id: Annotated[
        int | None, typer.Argument(help="One e-mail; default: every dead one")
    ] = None,
    uncertain: Annotated[
        bool,
        typer.Option(
            "--uncertain",
            help="Also resend 'uncertain' e-mails (the server may already have delivered them)",
        ),
    ] = False,
) -> None:
    """Send dead e-mails again, with a fresh count of attempts."""
    queue = queue_for(Settings())
    ids = outbox_module.requeue(queue, outbox_id=outbox_id, uncertain=uncertain)
    if not ids:
        what = f"e-mail {outbox_id}" if outbox_id is not None else "e-mails"
        typer.echo(f"no dead {what} to retry" + ("" if uncertain else " (see --uncertain)"))
        raise typer.Exit(1 if outbox_id is not None else 0)
    typer.echo(f"queued again: {', '.join(str(i) for i in ids)}")


app = typer.Typer(help="VitaSync notify commands", no_args_is_help=True, add_completion=False)
app.command("worker")(worker)
app.command("outbox-list")(outbox_list)
app.command("outbox-retry")(outbox_retry)

if __name__ == "__main__":
    app()
