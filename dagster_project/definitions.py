"""The facelake code location: every dataset area's definitions merged, with the resources and the executor."""

from __future__ import annotations

from dagster import Definitions

from assets import celebahq, clip, faces, hyperface, laion_face, sfhq
from dagster_project.executors import executor_from_env
from dagster_project.settings import current_settings
from facelake.settings import FacelakeSettings
from resources import CatalogResource, Img2DatasetResource, LaionSourcesResource, StorageResource
from resources.clip import ClipResource
from resources.models import ModelRegistryResource

AREAS = (laion_face, faces, celebahq, hyperface, clip, sfhq)
"""The dataset areas, each a module of ``assets/`` with ``definitions(settings)``."""


def build_definitions(settings: FacelakeSettings) -> Definitions:
    """Definitions for one deployment's settings (tests build their own)."""
    resources = Definitions(
        resources={
            "storage": StorageResource.from_settings(settings),
            "laion_sources": LaionSourcesResource.from_settings(settings),
            "img2dataset": Img2DatasetResource.from_settings(settings),
            "catalog": CatalogResource(),
            "models": ModelRegistryResource.from_settings(settings),
            "clip": ClipResource.from_settings(settings),
        },
        executor=executor_from_env(),
    )
    return Definitions.merge(*(area.definitions(settings) for area in AREAS), resources)


defs = build_definitions(current_settings())
