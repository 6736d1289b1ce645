"""The README's main command (`make demo` = `python -m dagster_project.demo`) on a fresh folder."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from facelake.catalog import EMPTY_WITHOUT_GENERATOR, describe, open_catalog
from facelake.celebahq import dataset as celebahq
from facelake.hyperface import references as hyperface
from facelake.lake.storage import Storage
from synthetic.celebahq_photos import NO_FACE, PEOPLE, person_copies
from synthetic.world import DEMO_HYPERFACE_SHARD_SIZE, DEMO_HYPERFACE_VARIANT
from tests.browser import demo_once


def committed_tables(lake: Storage, artifact, folder: str) -> pa.Table:
    """The committed parquet files of ``artifact`` under ``folder`` (e.g. ``data/``), in order."""
    uris = sorted(u for u in artifact.file_uris(suffix=".parquet") if f"/{folder}" in u)
    assert uris, f"no committed {folder} files under {artifact.prefix}"
    tables = []
    for uri in uris:
        with lake.open(uri) as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables)


CLIP_HEADING = "\nCLIP embeddings, search index, near-duplicates and a text search"
CLIP_VIEWS = (
    "clip_embeddings_metadata",
    "clip_spaces",
    "clip_index",
    "clip_index_probe_hits",
    "clip_near_duplicates_keep",
    "clip_near_duplicates_groups",
    "clip_near_duplicates_pairs",
)


def assert_clip_section(clip: str, celebahq_images: int) -> None:
    """The demo's CLIP lines: ViT-B-32's architecture with random weights, labelled; both embedding assets,
    the exact index, the passing check and five ranked hits of the search."""
    assert "CLIP model       : open_clip:ViT-B-32 (512-d, RANDOM TEST WEIGHTS" in clip, clip
    assert "WARNING          : RANDOM WEIGHTS: open_clip:ViT-B-32 was initialised randomly" in clip, clip
    assert "LAION embeddings : 142 images of laion_face_clip_embeddings[00000]" in clip, clip
    assert f"CelebA-HQ        : {celebahq_images} images of celebahq_clip_embeddings" in clip, clip
    assert "search index     : exact: 142 rows <= exact_search_max_rows" in clip and "no index needed" in clip
    assert re.search(r"near-duplicates  : similarity > 0\.92: \d+ pairs in \d+ groups; kept \d+ of 159", clip)
    assert "check            : no_kept_pair_above_threshold passed" in clip, clip
    assert 'search           : "a smiling old man with a beard" (exact, top 5):' in clip, clip
    hits = re.findall(r"^    #(\d) (-?\d\.\d{4}) (\S+)", clip, re.MULTILINE)
    assert [int(rank) for rank, _, _ in hits] == [1, 2, 3, 4, 5], clip
    scores = [float(score) for _, score, _ in hits]
    assert scores == sorted(scores, reverse=True)


def assert_clip_views(lake: Storage) -> None:
    """Every CLIP view has rows after the demo, and every embedding row says its weights were random."""
    with open_catalog(lake) as conn:
        for view in CLIP_VIEWS:
            [(count,)] = conn.sql(f"SELECT count(*) FROM {view}").fetchall()
            assert count > 0, f"{view} is empty after the demo"
        flags = conn.sql("SELECT DISTINCT embedder_random_init FROM clip_embeddings_metadata").fetchall()
        assert flags == [(True,)]
        assets = conn.sql("SELECT DISTINCT asset FROM clip_embeddings_metadata ORDER BY asset").fetchall()
        assert assets == [("celebahq_clip_embeddings",), ("laion_face_clip_embeddings",)]


CATALOG_HEADING = "\nCatalog: "
EMPTY_ON_CLEAN_DATA = ("sfhq_problems", "sfhq_near_duplicates", "sfhq_no_face")
"""Views that list problems: the demo's SFHQ part has none (every file usable, no near-duplicate, a face in
every image)."""


def assert_catalog_listed(printed: str, lake: Storage) -> None:
    """The summary lists every catalog view with its row count; every view has rows except the generation
    views (no generator weights in the demo: their line says why) and the SFHQ problem lists."""
    _, heading, listing = printed.partition(CATALOG_HEADING)
    assert heading, f"no catalog section in:\n{printed}"
    listed = dict(re.findall(r"^  (\w+) +([\d,]+) rows", listing, re.MULTILINE))
    with open_catalog(lake) as conn:
        views = {r["name"]: r["rows"] for r in describe(conn).to_pylist() if r["kind"] == "view"}
    assert {name: int(rows.replace(",", "")) for name, rows in listed.items()} == views
    empty = {name for name, rows in views.items() if rows == 0}
    assert empty == {*EMPTY_WITHOUT_GENERATOR, *EMPTY_ON_CLEAN_DATA}, empty
    for view in EMPTY_WITHOUT_GENERATOR:
        assert re.search(rf"^  {view} +0 rows  -- .*Empty unless generator weights", listing, re.MULTILINE)
    assert views["laion_face_identity_clusters"] == views["laion_face_embeddings"] == 142
    assert views["celebahq_identity_clusters"] == views["celebahq_face_embeddings"]


@pytest.mark.slow
def test_demo_materializes_part_00000_into_a_persistent_instance(tmp_path_factory):
    # `python -m dagster_project.demo --dir <fresh folder> --fresh`, run once per test process and shared with
    # the UI test (tests/test_ui_browser.py), which opens this same instance in a browser
    demo = demo_once(tmp_path_factory)
    printed = demo.printed
    assert "success=142, failed_to_download=9, failed_to_resize=4, opted_out=5" in printed
    assert "our detections   : 142 faces" in printed
    copies = len(person_copies(PEOPLE[0]))
    images = 2 * copies + 1
    assert (
        f"CelebA-HQ images : {images} in " in printed and f"({2 * copies} with a face, 1 without)" in printed
    )
    assert "identities       : 2 (2 clusters, 0 singletons)" in printed
    assert "eps              : 0.092 (eps_source profile, used profile" in printed
    identities = DEMO_HYPERFACE_VARIANT["identities"]
    assert f"HyperFace        : variant demo: N={identities}, d=128, gallery 142 faces" in printed
    assert "check            : min_angle_reaches_bound passed" in printed
    [generation] = re.findall(r"^  generation       : (.*)$", printed, re.MULTILINE)
    assert generation.startswith(
        "HyperFace generation skipped, its views stay empty: the Arc2Face generator "
    )
    assert f"needs stable-diffusion-v1-5, arc2face under {demo.models}" in generation
    before_clip, clip_heading, clip = printed.partition(CLIP_HEADING)
    assert clip_heading, f"no CLIP section in:\n{printed}"
    assert "trained weights" in before_clip and "RANDOM" not in before_clip, "dlib's weights are real"
    assert_clip_section(clip, images)

    lake = Storage(str(demo.base / "lake"))
    clusters = committed_tables(lake, celebahq.clusters_artifact(lake), "data/")
    assert clusters.column_names == ["image", "file_name", "cluster_id", "cluster_size"]
    cluster_of = dict(zip(clusters["file_name"].to_pylist(), clusters["cluster_id"].to_pylist(), strict=True))
    assert NO_FACE not in cluster_of and len(cluster_of) == 2 * copies
    ids = {who: {cluster_of[f"{who}_{tag}.jpg"] for tag, _ in person_copies(who)} for who in PEOPLE}
    assert all(len(shared) == 1 for shared in ids.values()), f"one person split over identities: {ids}"
    assert ids["astronaut"] != ids["grace_hopper"], "the two people share an identity"

    reference = hyperface.reference_artifact(lake, "demo")
    shards = hyperface.reference_shard_ids(reference)
    assert shards == list(range(-(-identities // DEMO_HYPERFACE_SHARD_SIZE)))
    table = hyperface.read_reference_embeddings(lake, reference)
    assert table["identity_id"].to_pylist() == [f"demo-{i:07d}" for i in range(identities)]
    assert table["embedder_random_init"].to_pylist() == [False] * identities
    assert hyperface.gallery_artifact(lake).require_manifest().rows == 142

    assert_clip_views(lake)

    home = demo.base / "dagster_home"
    assert (home / "dagster.yaml").is_file()
    with DagsterInstance.from_config(str(home)) as instance:
        for key in ("laion_face_meta", "laion_face_images", "laion_face_detections", "laion_face_detected"):
            event = instance.get_latest_materialization_event(AssetKey(key))
            assert event is not None and event.asset_materialization.partition == "00000"
        for key in ("laion_face_report", "celebahq_identity_clusters", "hyperface_gallery"):
            assert instance.get_latest_materialization_event(AssetKey(key)) is not None, key
        event = instance.get_latest_materialization_event(AssetKey("hyperface_reference_embeddings"))
        assert event is not None and event.asset_materialization.partition == "demo"
        for key in ("laion_face_clip_embeddings", "laion_face_clip_index"):
            event = instance.get_latest_materialization_event(AssetKey(key))
            assert event is not None and event.asset_materialization.partition == "00000", key
        for key in ("celebahq_clip_embeddings", "clip_near_duplicates", "laion_face_clip_embeddings"):
            metadata = instance.get_latest_materialization_event(AssetKey(key)).asset_materialization.metadata
            assert metadata["random_init"].value is True and "RANDOM WEIGHTS" in metadata["warning"].value, (
                key
            )
        for asset, check in (
            ("hyperface_reference_embeddings", "min_angle_reaches_bound"),
            ("celebahq_identity_clusters", "members_near_centroid"),
            ("clip_near_duplicates", "no_kept_pair_above_threshold"),
        ):
            record = instance.get_latest_asset_check_evaluation_record(AssetCheckKey(AssetKey(asset), check))
            assert record is not None and record.event.dagster_event.event_specific_data.passed is True

    # SFHQ: a small part of real faces, every asset of part 1, its catalog views with rows
    sfhq_heading = "\nSFHQ part 1: index, landmarks, segmentations, CLIP features, faces, report"
    assert sfhq_heading in printed, printed
    sfhq_lines = printed.split(sfhq_heading, 1)[1]
    assert "SFHQ images      : 8 in " in sfhq_lines and "(8 complete)" in sfhq_lines
    assert "landmarks, maps  : 8 / 8 rows (landmark order ASSUMED (unverified)" in sfhq_lines
    assert "CLIP features    : CLIP_ViTL_14@336 -> open_clip:ViT-L-14-336-quickgelu" in sfhq_lines
    assert "(space declared, weights not here)" in sfhq_lines
    assert "SFHQ's claim     : 0 pairs above 0.92 (holds)" in sfhq_lines
    assert "faces            : 8 embedded, 0 without a face" in sfhq_lines
    assert "checks           : 6 of 6 passed" in sfhq_lines
    with open_catalog(lake) as conn:
        for view, rows in (
            ("sfhq_index", 8),
            ("sfhq_landmarks", 8),
            ("sfhq_segmentations", 8),
            ("sfhq_clip_features", 8),
            ("sfhq_face_embeddings", 8),
            ("sfhq_problems", 0),
            ("sfhq_near_duplicates", 0),
        ):
            assert conn.execute(f"SELECT count(*) FROM {view} WHERE part = '1'").fetchone()[0] == rows, view
        assert conn.execute("SELECT names, complete, problems FROM sfhq_parts").fetchall() == [(8, 8, 0)]
    assert_catalog_listed(printed, lake)
    with DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey("laion_face_identity_clusters"))
        assert event is not None and event.asset_materialization.partition == "00000"
        for key in ("sfhq_index", "sfhq_clip_features", "sfhq_face_embeddings", "sfhq_report"):
            event = instance.get_latest_materialization_event(AssetKey(key))
            assert event is not None and event.asset_materialization.partition == "1", key
