"""`guardstream console …`: run the console, hash a reviewer's token, migrate the review store."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from console.settings import ConsoleSettings
    from runtime.dependencies import Dependency

NO_REVIEWERS = "no reviewers: set GUARDSTREAM_ACCESS__REVIEWERS"

app = typer.Typer(help="The audit console: review verdicts in a browser; labels go to moderation.audit.labels.",
                  invoke_without_command=True)


@app.callback()
def console(
    ctx: typer.Context,
    check_config: bool = typer.Option(False, "--check-config", help="validate the settings, print them (secrets "
                                      "masked) as one JSON line and exit: no connection"),
) -> None:
    """Run the console (settings: GUARDSTREAM_* or GUARDSTREAM_CONFIG_FILE; see the README's Console section).
    At start the brokers, the review store (unless a SQLite file) and the S3 endpoint (when set) must answer,
    else exit 4."""
    if ctx.invoked_subcommand is not None:
        return
    from console.settings import ConsoleSettings
    from runtime.service import check_config_only, load_settings, start_service
    from workers.dependencies import service_dependencies

    if check_config:
        check_config_only("console", ConsoleSettings, _no_reviewers)
        return
    from console.service import ConsoleService

    settings = load_settings(ConsoleSettings)
    if not settings.access.reviewers:
        typer.echo(f"{NO_REVIEWERS} (see `guardstream console hash-token`)", err=True)
        raise typer.Exit(2)
    start_service(lambda: ConsoleService(settings), settings,
                  service_dependencies(settings.kafka, None, settings.fetch, _store_dependency(settings)))


def _no_reviewers(settings: ConsoleSettings) -> list[str]:
    return [] if settings.access.reviewers else [f"access.reviewers ({NO_REVIEWERS})"]


def _store_dependency(settings: ConsoleSettings) -> Dependency | None:
    """The review store, unless a SQLite file (the console makes that itself): a connection must open."""
    from sqlalchemy.engine import make_url

    from console.store import make_engine
    from runtime.dependencies import Dependency

    url = settings.database_url.get_secret_value()
    if url.startswith("sqlite"):
        return None
    parsed = make_url(url)

    async def probe(timeout_s: float) -> None:
        def connect() -> None:
            engine = make_engine(url, timeout_s)
            try:
                engine.connect().close()
            finally:
                engine.dispose()

        await asyncio.to_thread(connect)

    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}" + (f"/{parsed.database}" if parsed.database else "")
    return Dependency(f"the review store at {where}", "start it, or set GUARDSTREAM_DATABASE_URL", probe)


@app.command("hash-token")
def hash_token_command(
    generate: bool = typer.Option(False, "--generate", help="make a new token, print it and its hash"),
) -> None:
    """Hash a reviewer's or reporter's token read from standard input, for ACCESS__REVIEWERS / REPORTERS."""
    from console.passwords import hash_token, new_token

    if generate:
        token = new_token()
        typer.echo(f"token: {token}\nhash:  {hash_token(token)}")
        return
    token = sys.stdin.readline().rstrip("\n")
    if not token:
        typer.echo("give the token on standard input (or --generate)", err=True)
        raise typer.Exit(2)
    typer.echo(hash_token(token))


@app.command("migrate")
def migrate_command() -> None:
    """Bring the review store's schema up to date (the console also does this at start by default)."""
    from console.migrate import current, upgrade
    from console.settings import ConsoleSettings
    from console.store import make_engine

    engine = make_engine(ConsoleSettings().database_url.get_secret_value())
    upgrade(engine)
    typer.echo(f"review store at revision {current(engine)}")
