"""Write the JSON Schema of every wire model, one file per model."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.events import AuditLabel, ChatEvent, DeadLetter, ModelRelease, Verdict

EXPORTED: tuple[type[BaseModel], ...] = (ChatEvent, Verdict, DeadLetter, AuditLabel, ModelRelease)


def export_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in EXPORTED:
        path = directory / f"{model.__name__}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
