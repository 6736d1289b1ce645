"""Face models over image assets: RetinaFace detections, identity embeddings and identity clusters, by
factories (:mod:`assets.faces.stages`); applied to LAION-Face parts here, with the faces job."""

from dagster import AssetKey, AssetSelection, Definitions, define_asset_job

from assets.areas import area_definitions
from assets.faces.laion import laion_face_model_assets
from facelake.settings import FacelakeSettings

LAION_FACE_MODEL_ASSETS = [AssetKey("laion_face_detected"), AssetKey("laion_face_embeddings")]

laion_face_faces_job = define_asset_job(
    "laion_face_faces_job",
    selection=AssetSelection.assets(*LAION_FACE_MODEL_ASSETS),
    description="Our own RetinaFace detections and identity embeddings of one downloaded part (GPU steps: "
    "pool 'gpu', celery queue 'gpu'), with the agreement check against the released detections.",
)


def definitions(settings: FacelakeSettings) -> Definitions:
    """The face-model area for ``settings``."""
    return area_definitions(laion_face_model_assets(settings), jobs=[laion_face_faces_job])
