"""`guardstream schemas ...`"""

from __future__ import annotations

from pathlib import Path

import typer

from schemas.export import export_schemas

app = typer.Typer(help="The wire contract.", no_args_is_help=True)


@app.command("export")
def export(directory: Path = typer.Argument(..., help="folder to write <Model>.schema.json files into")) -> None:
    """Write the JSON Schema of every wire model."""
    for path in export_schemas(directory):
        typer.echo(path)
