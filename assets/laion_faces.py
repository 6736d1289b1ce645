"""LAION-Face through the face models: our own detections per part, their agreement with the released ones,
and identity embeddings of every detected face (the factories of :mod:`assets.faces`)."""

from dagster import AssetKey

from assets.faces import detected_faces_asset, detections_agreement_check, face_embeddings_asset
from assets.partitions import laion_parts
from facelake.laion import artifacts
from facelake.settings import FacelakeSettings

GROUP = "laion_face_models"
LAION_FACE_MODEL_ASSETS = [AssetKey("laion_face_detected"), AssetKey("laion_face_embeddings")]


def laion_face_model_assets(settings: FacelakeSettings) -> list:
    """Detected faces, embeddings and the agreement check for the LAION-Face parts."""
    models = settings.models
    detector_version = {
        "backbone": models.detector_backbone,
        "max_side": models.detector_max_side,
        "threshold": models.detector_threshold,
        "paths": models.paths,
    }
    detected = detected_faces_asset(
        name="laion_face_detected",
        images="laion_face_images",
        partitions_def=laion_parts,
        images_artifact=artifacts.images,
        out_artifact=artifacts.detected,
        group=GROUP,
        detector_version=detector_version,
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
        images="laion_face_images",
        detections="laion_face_detected",
        partitions_def=laion_parts,
        images_artifact=artifacts.images,
        detections_artifact=artifacts.detected,
        out_artifact=artifacts.embeddings,
        group=GROUP,
        embedder_version={"embedder": models.embedder, "paths": models.paths, **detector_version},
    )
    return [detected, embeddings, check]
