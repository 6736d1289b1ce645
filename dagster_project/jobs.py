"""Jobs: the per-part LAION-Face pipeline (meta -> images, detections) and the global inputs."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from assets.hyperface import HYPERFACE_REFERENCE_ASSETS
from assets.identity_clusters import CELEBAHQ_ASSETS
from assets.laion import LAION_GLOBAL_ASSETS, LAION_PART_ASSETS
from assets.laion_faces import LAION_FACE_MODEL_ASSETS

laion_face_part_job = define_asset_job(
    "laion_face_part_job",
    selection=AssetSelection.assets(*LAION_PART_ASSETS),
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

laion_face_faces_job = define_asset_job(
    "laion_face_faces_job",
    selection=AssetSelection.assets(*LAION_FACE_MODEL_ASSETS),
    description="Our own RetinaFace detections and identity embeddings of one downloaded part (GPU steps: "
    "pool 'gpu', celery queue 'gpu'), with the agreement check against the released detections.",
)

hyperface_reference_job = define_asset_job(
    "hyperface_reference_job",
    selection=AssetSelection.assets(*HYPERFACE_REFERENCE_ASSETS),
    description="HyperFace reference embeddings of one variant (partition key = variant name from "
    "hyperface.variants; GPU step: pool 'gpu', celery queue 'gpu'), with the blocking minimum-angle check. "
    "Materialize hyperface_gallery first.",
)

celebahq_identity_job = define_asset_job(
    "celebahq_identity_job",
    selection=AssetSelection.assets(*CELEBAHQ_ASSETS),
    description="CelebA-HQ identity labels as on the celebahq_512_id_clusters card: index the jxie/celeba-hq "
    "parquet export, embed one face per image (GPU step), DBSCAN (cosine, eps from the embedder's profile, the "
    "NN-similarity valley or fixed; min_samples 2) with noise as singleton identities, and the centroid check.",
)
