"""The `vitasync-fhir` command."""

from __future__ import annotations

import asyncio

import typer

from vitasync_fhir import migrations, serving
from vitasync_fhir.auth.commands import create_client, create_user
from vitasync_fhir.config import Settings
from vitasync_fhir.db import is_sqlite
from vitasync_fhir.importer.command import import_command
from vitasync_fhir.notify import commands as notify_commands
from vitasync_fhir.notify.worker import serving as notify_serving

cli = typer.Typer(help="VitaSync FHIR server", no_args_is_help=True, add_completion=False)


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(8000, help="Port to listen on"),
    workers: int = typer.Option(1, help="Worker processes"),
) -> None:
    """Run the server (an embedded SQLite database is migrated on first start)."""
    settings = Settings()
    if is_sqlite(settings.database_url):
        migrations.upgrade(settings.database_url)
    typer.echo(f"VitaSync FHIR on http://{host}:{port}/fhir  (database: {settings.database_url})")
    # Relays queued e-mail at start; without Redis it also runs the task consumer in-process.
    with notify_serving(settings):
        serving.serve(host, port, workers)


@cli.command()
def migrate() -> None:
    """Bring the configured database to the newest schema (alembic upgrade head)."""
    settings = Settings()
    migrations.upgrade(settings.database_url)
    typer.echo("database is at the newest schema")


@cli.command()
def reindex() -> None:
    """Rebuild every search index from the stored resources."""
    from vitasync_fhir.db import Database
    from vitasync_fhir.fhir.search.index import reindex as rebuild

    async def run() -> int:
        database = Database(Settings())
        try:
            return await rebuild(database)
        finally:
            await database.dispose()

    count = asyncio.run(run())
    typer.echo(f"reindexed {count} resources")


cli.command("create-user")(create_user)
cli.command("create-client")(create_client)
cli.command("worker")(notify_commands.worker)
cli.command("outbox-list")(notify_commands.outbox_list)
cli.command("outbox-retry")(notify_commands.outbox_retry)
cli.command("import")(import_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
