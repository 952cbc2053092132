"""`guardstream console …`: run the console, hash a reviewer's token, migrate the review store."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(help="The audit console: review verdicts in a browser; labels go to moderation.audit.labels.",
                  invoke_without_command=True)


@app.callback()
def console(ctx: typer.Context) -> None:
    """Run the console (settings: GUARDSTREAM_* or GUARDSTREAM_CONFIG_FILE; see the README's Console section)."""
    if ctx.invoked_subcommand is not None:
        return
    from aiokafka.errors import KafkaConnectionError
    from sqlalchemy.exc import OperationalError

    from console.service import ConsoleService
    from console.settings import ConsoleSettings
    from workers.runtime import run_service

    settings = ConsoleSettings()
    if not settings.access.reviewers:
        typer.echo("no reviewers: set GUARDSTREAM_ACCESS__REVIEWERS (see `guardstream console hash-token`)",
                   err=True)
        raise typer.Exit(2)
    try:
        run_service(ConsoleService(settings), settings.observability)
    except KafkaConnectionError as exc:
        typer.echo(f"cannot reach the brokers at {settings.kafka.bootstrap_servers}: {exc}", err=True)
        raise typer.Exit(1) from None
    except OperationalError as exc:  # the message names the server, never the URL's password
        typer.echo(f"cannot use the review store: {str(exc.orig).strip()}", err=True)
        raise typer.Exit(1) from None


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
