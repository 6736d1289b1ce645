"""LAION-Face through the face models: our own detections per part, their agreement with the released ones,
identity embeddings of every detected face and their identity clusters (the factories of
:mod:`assets.faces.stages` and :mod:`assets.clusters`)."""

from dagster import AssetsDefinition, AutomationCondition

from assets.clusters import identity_clusters_asset
from assets.faces.stages import (
    detected_faces_asset,
    detections_agreement_check,
    detector_config,
    embedder_config,
    face_embeddings_asset,
)
from assets.partitions import laion_parts
from facelake.laion import artifacts
from facelake.settings import FacelakeSettings

GROUP = "laion_face_models"


def faces_follow_images(settings: FacelakeSettings) -> bool:
    """Whether a part's detections and embeddings follow its images by declarative automation (default on;
    ``schedule.faces_follow_images: false`` turns it off)."""
    return settings.schedule.faces_follow_images


def follow_upstream(assets_def: AssetsDefinition) -> AssetsDefinition:
    """The asset with ``AutomationCondition.eager()``: a partition is requested when its upstream partitions
    are newly materialized (none missing, none in progress, the asset itself not in progress)."""
    return assets_def.map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=AutomationCondition.eager())
    )


def laion_face_model_assets(settings: FacelakeSettings) -> list:
    """Detected faces, embeddings, the agreement check and identity clusters of the LAION-Face parts."""
    stage = {
        "images": "laion_face_images",
        "partitions_def": laion_parts,
        "images_artifact": artifacts.images,
        "group": GROUP,
    }
    detected = detected_faces_asset(
        name="laion_face_detected",
        out_artifact=artifacts.detected,
        detector_version=detector_config(settings.models),
        **stage,
    )
    check = detections_agreement_check(
        asset_name="laion_face_detected",
        partitions_def=laion_parts,
        ours_artifact=artifacts.detected,
        reference_artifact=artifacts.detections,
        images_artifact=artifacts.images,
    )
    embeddings = face_embeddings_asset(
        name="laion_face_embeddings",
        detections="laion_face_detected",
        detections_artifact=artifacts.detected,
        out_artifact=artifacts.embeddings,
        embedder_version=embedder_config(settings.models),
        **stage,
    )
    clusters = identity_clusters_asset(
        name="laion_face_identity_clusters",
        embeddings="laion_face_embeddings",
        embeddings_artifact=artifacts.embeddings,
        out_artifact=lambda lake, part: artifacts.part_artifact(lake, "identity_clusters", part),
        settings=settings.clustering,
        group=GROUP,
        partitions_def=laion_parts,
    )
    if faces_follow_images(settings):
        detected, embeddings = follow_upstream(detected), follow_upstream(embeddings)
    return [detected, embeddings, check, clusters]
