"""The facelake code location: assets, checks, jobs, schedules and resources, built from the settings."""

from __future__ import annotations

from dagster import Definitions

from assets.hyperface import hyperface_assets
from assets.identity_clusters import identity_cluster_assets
from assets.laion import laion_assets
from assets.laion_faces import laion_face_model_assets
from dagster_project.executors import executor_from_env
from dagster_project.jobs import (
    celebahq_identity_job,
    hyperface_reference_job,
    laion_face_faces_job,
    laion_face_inputs_job,
    laion_face_part_job,
    laion_face_report_job,
)
from dagster_project.schedules import laion_schedule
from dagster_project.settings import current_settings
from facelake.settings import FacelakeSettings
from resources import CatalogResource, Img2DatasetResource, LaionSourcesResource, StorageResource
from resources.models import ModelRegistryResource


def build_definitions(settings: FacelakeSettings) -> Definitions:
    """Definitions for one deployment's settings (tests build their own)."""
    model_assets = laion_face_model_assets(settings)
    return Definitions(
        assets=laion_assets(settings)
        + model_assets[:-1]
        + hyperface_assets(settings)
        + identity_cluster_assets(settings),
        asset_checks=model_assets[-1:],
        jobs=[
            laion_face_part_job,
            laion_face_inputs_job,
            laion_face_report_job,
            laion_face_faces_job,
            hyperface_reference_job,
            celebahq_identity_job,
        ],
        schedules=[laion_schedule(settings)],
        resources={
            "storage": StorageResource.from_settings(settings),
            "laion_sources": LaionSourcesResource.from_settings(settings),
            "img2dataset": Img2DatasetResource.from_settings(settings),
            "catalog": CatalogResource(),
            "models": ModelRegistryResource.from_settings(settings),
        },
        executor=executor_from_env(),
    )


defs = build_definitions(current_settings())
