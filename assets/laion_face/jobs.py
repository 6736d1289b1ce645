"""LAION-Face jobs: the per-part pipeline (meta -> images, detections), the global inputs, the report."""

from dagster import AssetKey

from assets.areas import asset_job
from assets.pools import DOWNLOAD_RUN_TAGS

LAION_GLOBAL_ASSETS = [AssetKey("laion_face_ids"), AssetKey("laion_face_optout")]
LAION_PART_ASSETS = [AssetKey(k) for k in ("laion_face_meta", "laion_face_images", "laion_face_detections")]

laion_face_part_job = asset_job(
    "laion_face_part_job",
    LAION_PART_ASSETS,
    "One LAION-Face part end to end: filtered metadata, img2dataset download, released detections. Backfill "
    "the 20M subset with parts 0,2,5,8,13,15,17,18,21,22,24,25,28 (see laion_face_20m_schedule).",
    tags=DOWNLOAD_RUN_TAGS,
)

laion_face_inputs_job = asset_job(
    "laion_face_inputs_job",
    LAION_GLOBAL_ASSETS,
    "The global inputs every part needs: the face id list and the opt-out blocklist.",
)

laion_face_report_job = asset_job(
    "laion_face_report_job",
    ["laion_face_report"],
    "Rebuild the per-part LAION-Face report from whatever is committed.",
)
