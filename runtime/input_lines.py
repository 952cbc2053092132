"""JSON Lines input files, read the way the batch commands (`produce`, `audit`, `eval`) read them.

Every line is parsed on its own. A line that does not fit becomes a `BadLine` naming its number, the field
at fault and what is wrong, so that a command can go on with the good lines, report each bad one, and end
with `PartialInput` (exit 6); with `--strict` the first bad line ends the command as `BadInputLine` (exit 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runtime.cli_errors import CommandFailed, Exit, one_line

SHOWN_PROBLEM_CHARS = 300


@dataclass(frozen=True)
class BadLine:
    """A line of an input file that is not an item: where it is, the field at fault ("" for the whole line)
    and what is wrong with it."""

    path: Path
    number: int
    field: str
    problem: str
    item_id: str | None = None  # the line's own id, where it could be read

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.path}:{self.number}: {where}{self.problem}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.number, "field": self.field or None, "problem": self.problem}


class BadInputLine(CommandFailed):
    """The first bad line of a file read strictly (`--strict`): the line printed names file:line and field."""

    exit_code = Exit.INPUT

    def __init__(self, bad: BadLine) -> None:
        super().__init__(f"{bad} (fix the line, or leave out --strict to go on past bad lines)")
        self.bad = bad


class PartialInput(CommandFailed):
    """A batch command that did every good line, but not all of them were good."""

    exit_code = Exit.PARTIAL


def numbered_lines(path: Path) -> Iterator[tuple[int, str | BadLine]]:
    """Each non-blank line with its number (from 1): its text, or a BadLine where it is not UTF-8."""
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, BadLine(path, number, "", f"not UTF-8 text (byte {exc.start})")
            continue
        if text.strip():
            yield number, text


def bad_line(path: Path, number: int, exc: ValidationError, text: str = "",
             renamed: Mapping[str, str] | None = None) -> BadLine:
    """The BadLine for the first of `exc`'s errors: its field (renamed by `renamed`, from the model's names
    to the file's) and its message, said for a person."""
    error = exc.errors()[0]
    location = [str(part) for part in error["loc"]]
    if location and renamed:
        location[0] = renamed.get(location[0], location[0])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "json_invalid":
        message = f"not a JSON object ({message})"
    elif error["type"] == "extra_forbidden":
        message = f"not a known field ({message}): remove it or check its spelling"
    return BadLine(path, number, ".".join(location), one_line(message)[:SHOWN_PROBLEM_CHARS], _own_id(text))


def _own_id(text: str) -> str | None:
    """The `id` or `event_id` a line gives itself, where it is JSON and gives one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    found = value.get("id", value.get("event_id"))
    return found if isinstance(found, str) and 0 < len(found) <= 256 else None

