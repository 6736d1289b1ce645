"""LAION-Face jobs: the per-part pipeline (meta -> images, detections), the global inputs, the report."""

from dagster import AssetKey, AssetSelection, define_asset_job

from assets.pools import DOWNLOAD_RUN_TAGS

LAION_GLOBAL_ASSETS = [AssetKey("laion_face_ids"), AssetKey("laion_face_optout")]
LAION_PART_ASSETS = [AssetKey(k) for k in ("laion_face_meta", "laion_face_images", "laion_face_detections")]

laion_face_part_job = define_asset_job(
    "laion_face_part_job",
    selection=AssetSelection.assets(*LAION_PART_ASSETS),
    tags=DOWNLOAD_RUN_TAGS,  # definition and run tags: every launch path (UI, schedule, backfill) tags runs
    description="One LAION-Face part end to end: filtered metadata, img2dataset download, released detections. "
    "Backfill the 20M subset with parts 0,2,5,8,13,15,17,18,21,22,24,25,28 (see laion_face_20m_schedule).",
)

laion_face_inputs_job = define_asset_job(
    "laion_face_inputs_job",
    selection=AssetSelection.assets(*LAION_GLOBAL_ASSETS),
    description="The global inputs every part needs: the face id list and the opt-out blocklist.",
)

laion_face_report_job = define_asset_job(
    "laion_face_report_job",
    selection=AssetSelection.assets("laion_face_report"),
    description="Rebuild the per-part LAION-Face report from whatever is committed.",
)
