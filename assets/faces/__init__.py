"""Face models over image assets: RetinaFace detections, identity embeddings and identity clusters, by
factories (:mod:`assets.faces.stages`); applied to LAION-Face parts here, with the faces job."""

from dagster import (
    AssetKey,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
)

from assets.areas import area_definitions, gpu_job
from assets.faces.laion import faces_follow_images, laion_face_model_assets
from assets.pools import GPU_RUN_TAGS
from facelake.settings import FacelakeSettings

LAION_FACE_MODEL_ASSETS = [AssetKey("laion_face_detected"), AssetKey("laion_face_embeddings")]

laion_face_faces_job = gpu_job(
    "laion_face_faces_job",
    LAION_FACE_MODEL_ASSETS,
    "Our own RetinaFace detections and identity embeddings of one downloaded part (GPU steps: "
    "pool 'gpu', celery queue 'gpu'), with the agreement check against the released detections.",
)


laion_face_models_automation = AutomationConditionSensorDefinition(
    "laion_face_models_automation",
    target=AssetSelection.assets(*LAION_FACE_MODEL_ASSETS),
    run_tags=GPU_RUN_TAGS,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    emit_backfills=False,
    description="Detections and embeddings of a part follow its images (their eager automation conditions); "
    "its runs carry facelake/resource=gpu, so the run queue holds them to the GPU limit.",
)
"""Evaluates the faces' automation conditions; one run per part, tagged for the GPU run limit."""


def definitions(settings: FacelakeSettings) -> Definitions:
    """The face-model area for ``settings``."""
    area = area_definitions(laion_face_model_assets(settings), jobs=[laion_face_faces_job])
    if not faces_follow_images(settings):
        return area
    return Definitions.merge(area, Definitions(sensors=[laion_face_models_automation]))
