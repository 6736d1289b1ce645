"""Defs-load smoke test: the code location loads and exposes the graph, jobs and schedule it promises."""

from __future__ import annotations

from dagster import AssetKey

from dagster_project.definitions import build_definitions, defs
from facelake.laion.formats import LAION_20M_PARTS
from facelake.settings import load_settings

PART_ASSETS = {"laion_face_meta", "laion_face_images", "laion_face_detections"}


def test_module_level_defs_load_with_every_asset_job_and_schedule():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == PART_ASSETS | {
        "laion_face_ids",
        "laion_face_optout",
        "laion_face_report",
        "laion_face_detected",
        "laion_face_embeddings",
        "laion400m_meta",
        "laion_sample2detect",
        "hyperface_gallery",
        "hyperface_reference_embeddings",
        "hyperface_images",
        "hyperface_aligned",
        "hyperface_identity_audit",
        "hyperface_leakage",
        "hyperface_dataset",
        "celebahq_images",
        "celebahq_face_embeddings",
        "celebahq_identity_clusters",
        "laion_face_identity_clusters",
        "sfhq_index",
        "sfhq_landmarks",
        "sfhq_segmentations",
        "sfhq_clip_features",
        "sfhq_face_embeddings",
        "sfhq_report",
        "sfhq_clip_embeddings",
        "laion_face_clip_embeddings",
        "laion_face_clip_index",
        "celebahq_clip_embeddings",
        "clip_near_duplicates",
    }
    assert {j.name for j in defs.jobs} == {
        "laion_face_part_job",
        "laion_face_inputs_job",
        "laion_face_report_job",
        "laion_face_faces_job",
        "hyperface_reference_job",
        "hyperface_images_job",
        "hyperface_curation_job",
        "celebahq_identity_job",
        "sfhq_part_job",
        "laion_face_clip_job",
        "clip_job",
    }
    assert [s.name for s in defs.schedules] == ["laion_face_20m_schedule"]
    for key in PART_ASSETS:
        node = graph.get(AssetKey(key))
        assert node.partitions_def.get_partition_keys() == [f"{i:05d}" for i in range(32)]
        assert node.code_version and "+cfg." in node.code_version
    assert graph.get(AssetKey("laion_face_meta")).parent_keys == {
        AssetKey("laion400m_meta"),
        AssetKey("laion_face_ids"),
    }
    checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        "success_rate",
        "agrees_with_released_detections",
        "min_angle_reaches_bound",
        "members_near_centroid",
        "no_problems",
        "no_near_duplicates_above_claim",
        "no_kept_pair_above_threshold",
        "every_identity_has_its_images",
        "counts_add_up",
        "identities_are_consistent",
        "not_empty",
    }


def test_schedule_subset_follows_settings():
    settings = load_settings()
    assert settings.schedule_parts() == LAION_20M_PARTS
    fifty = settings.model_copy(update={"schedule": settings.schedule.model_copy(update={"subset": "50m"})})
    assert [s.name for s in build_definitions(fifty).schedules] == ["laion_face_50m_schedule"]
