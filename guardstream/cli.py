"""The `guardstream` console script: one command, a subcommand per job, each mounted from the package whose job it
is (the worker's, the trainer's, the console's, the topics' and schemas' commands), and the demos."""

from __future__ import annotations

import asyncio
import sys

import typer

from console.cli import app as console_app
from guardstream.broker_cli import broker_command
from guardstream.replay_cli import replay_command
from guardstream.topics_cli import app as topics_app
from guardstream.topics_cli import produce, tail
from runtime.cli_errors import run_command
from schemas.cli import app as schemas_app
from trainer.cli import app as train_app
from trainer.cli import audit_command, eval_command, trainer_command
from trainer.label_cli import label_command
from workers.commands import worker_command

app = typer.Typer(help="guardstream: streaming moderation with a reasoning guard. Exit codes: 0 done, 2 usage, "
                  "3 bad input, 4 a dependency unreachable, 5 refused, 6 partial (see the README); --debug shows "
                  "a failure's traceback.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(schemas_app, name="schemas")
app.add_typer(topics_app, name="topics")
app.add_typer(train_app, name="train")
app.add_typer(console_app, name="console")
app.command("produce")(produce)
app.command("tail")(tail)
app.command("trainer")(trainer_command)
app.command("eval")(eval_command)
app.command("audit")(audit_command)
app.command("replay")(replay_command)
app.command("broker")(broker_command)
app.command("label")(label_command)
app.command("worker")(worker_command)


@app.command("demo")
def demo(
    events: int = typer.Option(48, help="how many sample events to publish (repeats included)"),
    show: int = typer.Option(24, help="how many verdicts to print in the table"),
    loop: bool = typer.Option(False, "--loop", help="then label the traffic, retrain, release, and judge the "
                              "samples again with the new model"),
    console: bool = typer.Option(False, "--console", help="then open the audit console on the demo's verdicts "
                                 "and leave it running (it prints the address and a sign-in token)"),
    console_port: int = typer.Option(8080, help="the console's loopback port (0: any free port)"),
) -> None:
    """Run everything locally: broker, cache, images, topics, sample events, a worker; print the verdicts."""
    if loop:
        from guardstream.demo_loop import run_loop_demo

        asyncio.run(run_loop_demo())
        return
    from guardstream.demo import run_demo

    asyncio.run(run_demo(events, show, console_port if console else None))


def main() -> None:
    sys.exit(run_command(app))
