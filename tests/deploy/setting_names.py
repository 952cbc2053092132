"""Which setting a GUARDSTREAM_* variable names: the deploy files' checks share it."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def setting_field(cls: type[BaseModel], name: str) -> FieldInfo | None:
    """The field a GUARDSTREAM_* variable sets (nested with `__`), or None when the model has none."""
    model: type[BaseModel] = cls
    parts = name.removeprefix("GUARDSTREAM_").lower().split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if depth == len(parts) - 1:
            return field
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return None
