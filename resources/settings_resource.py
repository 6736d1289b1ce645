"""Resources whose fields ARE an engine settings model's fields: declared once, in the engine."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic
from dagster import ConfigurableResource

M = TypeVar("M", bound=pydantic.BaseModel)


def settings_resource(model: type[M], name: str) -> type[ConfigurableResource]:
    """A ConfigurableResource base class with the fields (types, defaults, descriptions) of ``model``.

    Subclasses add behaviour; ``self.settings_model()`` rebuilds (and so re-validates) the engine model."""

    fields: dict[str, Any] = {key: (field.annotation, field) for key, field in model.model_fields.items()}
    base = pydantic.create_model(name, __base__=ConfigurableResource, __doc__=model.__doc__, **fields)

    def settings_model(self: ConfigurableResource) -> M:
        return model(**{key: getattr(self, key) for key in model.model_fields})

    base.settings_model = settings_model  # type: ignore[attr-defined]
    return base
