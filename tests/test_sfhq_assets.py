"""SFHQ as Dagster assets, through ``dagster asset materialize -m dagster_project --partition 1`` in a subprocess,
on the fixture with real faces (synthetic.sfhq), on a local root and on the local S3 server.

Local: a part with one of every fault (missing, orphan, unexpected, corrupt, invalid files, a MALICIOUS feature
pickle, an image without a face, plus an undecodable JPEG) whose features are a tiny saved open_clip model's
image embeddings under the registered key ``TINY_CLIP`` (``sfhq.feature_model: local-dir:...``): every output
number against the fixture's known values, every fault a problem row and a failed ``no_problems`` check,
the payload of the malicious pickle never ran, ``facelake search`` over the features with the tiny model's
text encoder, the report's HTML, the catalog views, and a HyperFace variant packed against the part's faces.
S3: a clean part with SFHQ's real key ``CLIP_ViTL_14@336`` (no weights offline): checks pass, the space is
declared (unverified), the report says why there is no text search, and ``facelake search`` fails clearly.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from facelake.catalog import open_catalog
from facelake.clip.catalog import clip_artifact
from facelake.clip.encoder import ClipEncoder
from facelake.clip.foreign import FOREIGN, committed_space_record
from facelake.clip.layout import read_partition
from facelake.clip.model import ClipModelSpec, load_clip, save_local_dir
from facelake.faces.identity import table_embeddings, table_space
from facelake.hyperface import references as hyperface
from facelake.lake.commit import Manifest, PartitionArtifact
from facelake.lake.storage import S3Options, Storage
from facelake.sfhq import artifacts as sfhq
from facelake.sfhq.catalog import PAIRS_FILE
from facelake.sfhq.segmentation import FRACTION_COLUMNS
from synthetic.clip import TINY_NAME, register_tiny_config
from synthetic.sfhq import FEATURE_KEY, Faults, SfhqFixture, write_sfhq_part
from tests.cli_helpers import (
    IN_PROCESS,
    cli_env,
    make_dagster_home,
    materialization_records,
    materialize,
    materialize_in_process,
    metadata_values,
    world_definitions,
)
from tests.conftest import S3_KEY, S3_SECRET
from tests.test_facelake_cli import clean_env, run_facelake
from tests.test_sfhq_report import Collector

pytestmark = pytest.mark.slow

SFHQ_ASSETS = [
    "sfhq_index",
    "sfhq_landmarks",
    "sfhq_segmentations",
    "sfhq_clip_features",
    "sfhq_face_embeddings",
    "sfhq_report",
]
TINY_KEY = "TINY_CLIP"
PROMPTS = ["a smiling woman", "an astronaut in a white suit"]
PROBE_K = 3
BROKEN_JPEG = "SFHQ_pt1_99999999"
TILE = {"identities": 4, "algorithm": "full", "iterations": 30, "min_angle_deg": 0.0}


@dataclass
class World:
    base: Path
    config: Path
    home: Path
    lake: Storage
    fixture: SfhqFixture
    encoder: ClipEncoder | None = None
    model: str | None = None


def write_config(base: Path, root: str, sources: str, **sections: object) -> Path:
    config = {
        "root": root,
        "sources": sources,
        "models": {"cache_dir": str(base / "models"), "torch_threads": 1},
        **sections,
    }
    path = base / "facelake.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def committed(lake: Storage, name: str, file: str) -> tuple[PartitionArtifact, Manifest, str]:
    artifact = sfhq.artifact(lake, name, "1")
    manifest = artifact.require_manifest()
    [path] = [f.path for f in manifest.files if f.path.rsplit("/", 1)[-1] == file]
    return artifact, manifest, artifact.uri(path)


def table(lake: Storage, name: str, file: str):
    _, _, uri = committed(lake, name, file)
    with lake.open(uri) as handle:
        return pq.read_table(handle)


def problems(lake: Storage, name: str) -> set[tuple[str, str, str]]:
    return {(r["name"], r["modality"], r["kind"]) for r in table(lake, name, sfhq.PROBLEMS_FILE).to_pylist()}


def check_passed(instance: DagsterInstance, asset: str, check: str) -> bool:
    record = instance.get_latest_asset_check_evaluation_record(AssetCheckKey(AssetKey(asset), check))
    assert record is not None, f"{asset}:{check} was not evaluated"
    return record.event.dagster_event.event_specific_data.passed


def metadata(instance: DagsterInstance, asset: str) -> dict:
    [record, *_] = materialization_records(instance, asset, "1")
    return metadata_values(record.asset_materialization)


# --- the local world ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_world(tmp_path_factory) -> World:
    """Every SFHQ asset of part 1 materialized by ``dagster asset materialize`` on a local root."""
    base = tmp_path_factory.mktemp("sfhq-local")
    register_tiny_config(base / "clip-config")
    loaded = load_clip(ClipModelSpec(TINY_NAME, seed=0))
    model = save_local_dir(loaded, base / "tiny-clip")
    encoder = ClipEncoder(load_clip(ClipModelSpec(model)), device="cpu", batch_size=4)

    def tiny_features(name: str, image: np.ndarray) -> dict:
        return {TINY_KEY: encoder.encode_images([image])}

    storage = Storage(str(base))
    fixture = write_sfhq_part(
        storage,
        str(base / "sources" / "sfhq" / "part1"),
        18,
        faults=Faults.all(),
        marker=str(base / "MALICIOUS_PICKLE_RAN"),
        features=tiny_features,
        feature_key=TINY_KEY,
    )
    storage.write_bytes(f"{fixture.folder}/images/{BROKEN_JPEG}.jpg", b"\xff\xd8 not a whole jpeg")
    config = write_config(
        base,
        str(base / "lake"),
        str(base / "sources"),
        sfhq={
            "feature_key": TINY_KEY,
            "feature_model": model,
            "threads": 2,
            "probe_prompts": PROMPTS,
            "probe_k": PROBE_K,
        },
        hyperface={
            "gallery": {"source": "sfhq_face_embeddings", "parts": ["1"]},
            "variants": {"tiny": TILE},
            "shard_size": 3,
        },
        clip={"model": model, "pretrained": None, "device": "cpu", "batch_size": 8},
    )
    home = make_dagster_home(base / "home")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("FACELAKE_ROOT", raising=False)
        env.setenv("FACELAKE_CONFIG", str(config))
        materialize([*SFHQ_ASSETS, "sfhq_clip_embeddings"], cli_env(home, **IN_PROCESS), partition="1")
    return World(base, config, home, Storage(str(base / "lake")), fixture, encoder, model)


@pytest.fixture(scope="module")
def local_instance(local_world) -> DagsterInstance:
    with DagsterInstance.from_config(str(local_world.home)) as instance:
        yield instance


def test_every_asset_materialized_part_1_and_every_fault_failed_its_check(local_world, local_instance):
    for asset in SFHQ_ASSETS:
        [record, *_] = materialization_records(local_instance, asset, "1")
        assert record.asset_materialization.partition == "1"
    for asset in SFHQ_ASSETS[:5]:
        assert check_passed(local_instance, asset, "no_problems") is False, asset
    assert not os.path.exists(local_world.fixture.marker), "the malicious pickle's payload ran"


def test_the_index_reports_every_missing_orphan_and_unexpected_file_by_name(local_world, local_instance):
    fixture, lake = local_world.fixture, local_world.lake
    index = table(lake, sfhq.INDEX, sfhq.INDEX_FILE)
    orphans = {name for names in fixture.orphans.values() for name in names}
    assert index["name"].to_pylist() == sorted({*fixture.names, BROKEN_JPEG, *orphans})
    expected = {(BROKEN_JPEG, m, "missing") for m in ("landmarks", "segmentations", "pretrained_features")}
    for fault, modality in (
        ("missing_landmarks", "landmarks"),
        ("missing_segmentation", "segmentations"),
        ("missing_features", "pretrained_features"),
    ):
        expected |= {(name, modality, "missing") for name in fixture.fault(fault)}
    expected |= {(name, modality, "orphan") for modality, names in fixture.orphans.items() for name in names}
    expected.add(("README.txt", "images", "unexpected"))
    assert problems(lake, sfhq.INDEX) == expected
    meta = metadata(local_instance, "sfhq_index")
    assert meta["images"] == 19 and meta["names"] == 22 and meta["complete"] == 15
    assert (meta["problems_missing"], meta["problems_orphan"], meta["problems_unexpected"]) == (6, 3, 1)
    assert "validation: PROBLEMS: missing 6, orphan 3, unexpected 1" in meta["validation"]


def test_landmarks_equal_the_fixture_and_bad_files_are_problems(local_world, local_instance):
    fixture, lake = local_world.fixture, local_world.lake
    landmarks = table(lake, sfhq.LANDMARKS, sfhq.LANDMARKS_FILE)
    unusable = fixture.faulty("missing_landmarks", "corrupt_npz", "wrong_shape_npz")
    assert landmarks["name"].to_pylist() == [n for n in fixture.names if n not in unusable]
    for row in landmarks.to_pylist():
        truth = fixture.images[row["name"]]
        np.testing.assert_array_equal(np.array(row["points"], np.float32), truth.points)
        assert row["valid"] is truth.landmark_valid
        np.testing.assert_allclose(row["box"], truth.landmark_box, rtol=1e-6)
        if truth.landmark_valid:
            assert (row["left_eye_x"], row["left_eye_y"]) == pytest.approx(truth.left_eye, abs=1e-3)
            assert (row["right_eye_x"], row["right_eye_y"]) == pytest.approx(truth.right_eye, abs=1e-3)
    expected = {(n, "landmarks", "unreadable") for n in fixture.fault("corrupt_npz")}
    expected |= {(n, "landmarks", "invalid") for n in fixture.faulty("wrong_shape_npz", "nan_landmarks")}
    expected |= {(n, "landmarks", "invalid") for n in fixture.fault("outside_landmarks")}
    assert problems(lake, sfhq.LANDMARKS) == expected
    meta = metadata(local_instance, "sfhq_landmarks")
    assert (meta["valid_rows"], meta["invalid_rows"]) == (landmarks.num_rows - 2, 2)
    assert meta["landmark_index_assumed"] is True and "ASSUMED" in meta["assumption"]


def test_segmentation_statistics_equal_the_fixture_geometry(local_world):
    fixture, lake = local_world.fixture, local_world.lake
    maps = table(lake, sfhq.SEGMENTATIONS, sfhq.SEGMENTATIONS_FILE)
    unusable = fixture.faulty("missing_segmentation", "bad_label_map", "corrupt_png", "rgb_map")
    assert maps["name"].to_pylist() == [n for n in fixture.names if n not in unusable]
    for row in maps.to_pylist():
        truth = fixture.images[row["name"]].map
        fractions = np.array([row[c] for c in FRACTION_COLUMNS], np.float32)
        np.testing.assert_array_equal(fractions, truth.fractions.astype(np.float32))
        assert (row["l_eye_x"], row["l_eye_y"]) == truth.eyes[4]
        assert row["hairline_y"] == truth.hairline_y
        assert row["hairline_coverage"] == pytest.approx(truth.hairline_coverage, rel=1e-6)
    found = {(n, k): p for n, _, k, p in _problem_rows(lake, sfhq.SEGMENTATIONS)}
    (bad,) = fixture.fault("bad_label_map")
    assert found[(bad, "invalid")] == "labels outside 0-18: 25 (4096 px)"
    assert {n for n, _ in found} == fixture.faulty("bad_label_map", "corrupt_png", "rgb_map")


def _problem_rows(lake: Storage, name: str) -> list[tuple[str, str, str, str]]:
    rows = table(lake, name, sfhq.PROBLEMS_FILE).to_pylist()
    return [(r["name"], r["modality"], r["kind"], r["problem"]) for r in rows]


def stored_features(lake: Storage):
    return read_partition(sfhq.artifact(lake, sfhq.CLIP_FEATURES, "1"))


def test_features_are_the_tiny_models_embeddings_in_the_clip_layout(local_world, local_instance):
    fixture, lake = local_world.fixture, local_world.lake
    data = stored_features(lake)
    unusable = fixture.faulty(
        "missing_features", "truncated_pickle", "missing_feature_key", "malicious_pickle"
    )
    names = [n for n in fixture.names if n not in unusable]
    assert data.metadata["name"].to_pylist() == names
    assert data.keys == [f"{fixture.folder}/images/{n}.jpg" for n in names]
    assert data.vectors.dtype == np.float16 and data.vectors.shape == (len(names), 32)
    expected = np.stack([fixture.images[n].features[TINY_KEY][0] for n in names])
    np.testing.assert_allclose(data.vectors.astype(np.float32), expected, atol=2e-3)
    space = data.space
    profile = local_world.encoder.profile
    assert space == profile.provenance(), "the features' space is the tiny model's, weights hashed"
    record = committed_space_record(sfhq.artifact(lake, sfhq.CLIP_FEATURES, "1"))
    assert record[FOREIGN]["label"] == TINY_KEY and record[FOREIGN]["weights_verified"] is True
    assert record["random_init"] is True and "RANDOM WEIGHTS" in record["warning"]
    found = {(n, k): p for n, _, k, p in _problem_rows(lake, sfhq.CLIP_FEATURES)}
    (evil,) = fixture.fault("malicious_pickle")
    assert found[(evil, "unsafe")] == (
        "refused to unpickle global io.open (not allowlisted); nothing was executed"
    )
    (truncated,) = fixture.fault("truncated_pickle")
    (nokey,) = fixture.fault("missing_feature_key")
    assert set(found) == {(evil, "unsafe"), (truncated, "unreadable"), (nokey, "invalid")}
    assert not os.path.exists(fixture.marker)
    meta = metadata(local_instance, "sfhq_clip_features")
    assert meta["feature_key"] == TINY_KEY and meta["weights_verified"] is True and meta["dimension"] == 32
    assert meta["problems_by_kind"] == {"invalid": 1, "unreadable": 1, "unsafe": 1}


def test_the_near_duplicate_claim_is_checked_exactly_over_the_features(local_world, local_instance):
    lake = local_world.lake
    data = stored_features(lake)
    vectors = data.vectors.astype(np.float64)
    similarity = vectors @ vectors.T
    rows, cols = np.nonzero(np.triu(similarity > 0.92, 1))
    names = data.metadata["name"].to_pylist()
    pairs = table(lake, sfhq.CLIP_FEATURES, PAIRS_FILE)
    got = {(a, b) for a, b in zip(pairs["name_a"].to_pylist(), pairs["name_b"].to_pylist(), strict=True)}
    assert got == {(names[r], names[c]) for r, c in zip(rows, cols, strict=True)}
    np.testing.assert_allclose(
        sorted(pairs["similarity"].to_pylist(), reverse=True),
        sorted(similarity[rows, cols], reverse=True),
        rtol=1e-9,
    )
    meta = metadata(local_instance, "sfhq_clip_features")
    assert meta["near_duplicate_pairs"] == len(rows) and meta["claim_holds"] is (len(rows) == 0)
    assert check_passed(local_instance, "sfhq_clip_features", "no_near_duplicates_above_claim") is (
        len(rows) == 0
    )


def expected_hits(world: World, prompt: str) -> tuple[list[str], np.ndarray]:
    data = stored_features(world.lake)
    query = world.encoder.encode_text([prompt])[0].astype(np.float64)
    scores = data.vectors.astype(np.float64) @ query
    return data.metadata["name"].to_pylist(), scores


def assert_ranked(world: World, prompt: str, hit_names: list[str]) -> None:
    """The hits are the top scores in order (ties within 1e-5 may swap)."""
    names, scores = expected_hits(world, prompt)
    score_of = dict(zip(names, scores, strict=True))
    best = np.sort(scores)[::-1][: len(hit_names)]
    np.testing.assert_allclose([score_of[n] for n in hit_names], best, atol=1e-5)


def test_search_cli_runs_over_the_part_with_the_features_models_text_encoder(local_world, tmp_path):
    env = clean_env(FACELAKE_CONFIG=str(local_world.config), HF_HUB_OFFLINE="1")
    done = run_facelake(
        "search", PROMPTS[1], "--asset", "sfhq_clip_features", "-k", "4", "--format", "json",
        "--sheet", str(tmp_path / "hits.png"), cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["asset"] == "sfhq_clip_features" and result["part"] == "1" and result["random_init"] is True
    assert any(f"encoded by {local_world.model}" in note for note in result["notes"])
    assert not any("grey tiles" in note for note in result["notes"]), result["notes"]
    assert_ranked(local_world, PROMPTS[1], [hit["name"] for hit in result["hits"]])
    assert (tmp_path / "hits.png").read_bytes().startswith(b"\x89PNG")


def test_the_clip_stage_embeds_the_parts_images_and_search_uses_the_configured_model(
    local_world, local_instance, tmp_path
):
    fixture, lake = local_world.fixture, local_world.lake
    data = read_partition(clip_artifact(lake, "sfhq_clip_embeddings", "1"))
    uris = [f"{fixture.folder}/images/{n}.jpg" for n in fixture.names]
    assert data.keys == uris, "every decodable image, in index order (the broken JPEG failed)"
    jpegs = [lake.read_bytes(uri) for uri in uris]
    expected = local_world.encoder.encode_images(jpegs)
    np.testing.assert_allclose(data.vectors.astype(np.float32), expected, atol=2e-3)
    assert data.space == local_world.encoder.profile.provenance()
    meta = metadata(local_instance, "sfhq_clip_embeddings")
    assert (meta["images"], meta["failed_images"]) == (18, 1) and meta["random_init"] is True
    env = clean_env(FACELAKE_CONFIG=str(local_world.config), HF_HUB_OFFLINE="1")
    done = run_facelake(
        "search", PROMPTS[0], "--asset", "sfhq_clip_embeddings", "--part", "1", "-k", "3", "--format", "json",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    query = local_world.encoder.encode_text([PROMPTS[0]])[0].astype(np.float64)
    scores = dict(zip(data.keys, data.vectors.astype(np.float64) @ query, strict=True))
    hits = [hit["image_path"] for hit in json.loads(done.stdout)["hits"]]
    np.testing.assert_allclose(
        [scores[h] for h in hits], sorted(scores.values(), reverse=True)[:3], atol=1e-5
    )


def test_face_embeddings_are_the_largest_face_of_each_readable_image(local_world, local_instance):
    fixture, lake = local_world.fixture, local_world.lake
    embeddings = table(lake, sfhq.FACE_EMBEDDINGS, sfhq.EMBEDDINGS_FILE)
    (no_face,) = fixture.fault("no_face_image")
    assert embeddings["name"].to_pylist() == [n for n in fixture.names if n != no_face]
    for name, box in zip(embeddings["name"].to_pylist(), embeddings["face_box"].to_pylist(), strict=True):
        truth = fixture.images[name].face_box
        inter = np.clip(np.minimum(box[2:], truth[2:]) - np.maximum(box[:2], truth[:2]), 0, None).prod()
        union = np.prod(np.subtract(box[2:], box[:2])) + np.prod(truth[2:] - truth[:2]) - inter
        assert inter / union >= 0.5, name
    assert table_space(embeddings)["embedder_name"].startswith("dlib")
    assert table(lake, sfhq.FACE_EMBEDDINGS, sfhq.NO_FACE_FILE)["name"].to_pylist() == [no_face]
    assert problems(lake, sfhq.FACE_EMBEDDINGS) == {(BROKEN_JPEG, "images", "unreadable")}
    meta = metadata(local_instance, "sfhq_face_embeddings")
    assert (meta["faces_embedded"], meta["images_without_face"], meta["images"]) == (17, 1, 19)


REPORT_PLOTS = ["landmark_layout", "class_areas", "measures", "hairline", "quantile_examples", "text_search"]


def read_report(lake: Storage) -> tuple[Collector, Manifest, PartitionArtifact]:
    artifact, manifest, uri = committed(lake, sfhq.REPORT, sfhq.REPORT_FILE)
    parser = Collector()
    parser.feed(lake.read_bytes(uri).decode())
    parser.close()
    return parser, manifest, artifact


def test_the_report_html_parses_and_holds_every_plot_and_the_probe_hits(local_world, local_instance):
    lake = local_world.lake
    parser, manifest, artifact = read_report(lake)
    assert parser.headings == [
        "Counts and validation",
        "Mean landmark layout",
        "Class areas",
        "Derived measures",
        "Hairline coverage",
        "Examples per quantile of hair_fraction",
        "Text search",
    ]
    plots = {f.path.rsplit("/", 1)[-1]: f.path for f in manifest.files if f.path.endswith(".png")}
    assert sorted(plots) == sorted(f"{slug}.png" for slug in REPORT_PLOTS)
    assert len(parser.images) == len(plots)
    for src, slug in zip(parser.images, REPORT_PLOTS, strict=True):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == lake.read_bytes(artifact.uri(plots[f"{slug}.png"]))
    search = parser.pre[-1]
    for prompt in PROMPTS:
        lines = search.split(f"{prompt!r}:\n", 1)[1].splitlines()[:PROBE_K]
        assert_ranked(local_world, prompt, [line.split()[-1] for line in lines])
    hits = table(lake, sfhq.REPORT, "probe_hits.parquet")
    assert hits.num_rows == len(PROMPTS) * PROBE_K
    meta = metadata(local_instance, "sfhq_report")
    for slug in REPORT_PLOTS:
        assert "data:image/png;base64," in meta[slug], slug
    assert meta["text_search_ran"] is True and meta["report_html"].endswith("/report.html")
    assert "validation: PROBLEMS:" in meta["counts"]


def test_catalog_views_have_the_parts_rows(local_world):
    lake = local_world.lake
    with open_catalog(lake) as conn:
        count = {
            view: conn.execute(f"SELECT count(*) FROM {view} WHERE part = '1'").fetchone()[0]
            for view in (
                "sfhq_index",
                "sfhq_problems",
                "sfhq_landmarks",
                "sfhq_segmentations",
                "sfhq_clip_features",
                "sfhq_face_embeddings",
                "sfhq_no_face",
            )
        }
        by_stage = dict(conn.execute("SELECT stage, count(*) FROM sfhq_problems GROUP BY stage").fetchall())
        part = conn.execute("SELECT names, images, complete, problems FROM sfhq_parts").fetchall()
    assert count == {
        "sfhq_index": 22,
        "sfhq_problems": 10 + 4 + 3 + 3 + 1,
        "sfhq_landmarks": 15,
        "sfhq_segmentations": 14,
        "sfhq_clip_features": 14,
        "sfhq_face_embeddings": 17,
        "sfhq_no_face": 1,
    }
    assert by_stage == {
        "index": 10,
        "landmarks": 4,
        "segmentations": 3,
        "clip_features": 3,
        "face_embeddings": 1,
    }
    assert part == [(22, 19, 15, 21)]


def test_describe_adds_the_committed_stages(local_world, tmp_path):
    env = clean_env(FACELAKE_CONFIG=str(local_world.config))
    done = run_facelake("sfhq", "describe", "--part", "1", cwd=tmp_path, env=env)
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"SFHQ part 1: {local_world.fixture.folder}"
    assert f"  {'landmark rows':22s} {15:>9,}" in lines and f"  {'face embeddings':22s} {17:>9,}" in lines
    assert (
        "validation: PROBLEMS: invalid 6, missing 6, orphan 3, unexpected 1, unreadable 4, unsafe 1" in lines
    )


def test_a_hyperface_variant_packs_against_the_sfhq_part_gallery(local_world, monkeypatch):
    monkeypatch.delenv("FACELAKE_ROOT", raising=False)
    monkeypatch.setenv("FACELAKE_CONFIG", str(local_world.config))
    defs = world_definitions()
    node = defs.resolve_asset_graph().get(AssetKey("hyperface_gallery"))
    assert node.parent_keys == {AssetKey("sfhq_face_embeddings")}
    instance = DagsterInstance.ephemeral()
    assert materialize_in_process(defs, ["hyperface_gallery"], instance).success
    reference = defs.resolve_job_def("hyperface_reference_job").execute_in_process(
        partition_key="tiny", instance=instance
    )
    assert reference.success
    lake = local_world.lake
    gallery = hyperface.read_gallery(lake)
    faces = table(lake, sfhq.FACE_EMBEDDINGS, sfhq.EMBEDDINGS_FILE)
    assert gallery.table["source"].to_pylist() == ["sfhq_face_embeddings[1]"] * faces.num_rows
    np.testing.assert_allclose(gallery.vectors, table_embeddings(faces), atol=1e-6)
    packed = hyperface.read_reference_embeddings(lake, hyperface.reference_artifact(lake, "tiny"))
    assert packed["identity_id"].to_pylist() == [f"tiny-{i:07d}" for i in range(4)]
    assert table_embeddings(packed).shape == (4, 128)
    [check] = reference.get_asset_check_evaluations()
    assert check.passed


# --- the S3 world ------------------------------------------------------------------------------------------


def test_every_asset_materializes_on_s3_with_the_real_key_and_no_weights(tmp_path, s3_storage, monkeypatch):
    s3 = s3_storage.s3
    bucket_root = s3_storage.root.rsplit("/", 1)[0]
    sources = Storage(f"{bucket_root}/sources", S3Options(s3.endpoint_url, s3.key, s3.secret))
    fixture = write_sfhq_part(sources, f"{sources.root}/sfhq/part1", 5)
    config = write_config(
        tmp_path,
        s3_storage.root,
        sources.root,
        s3={"endpoint_url": s3.endpoint_url, "key": S3_KEY, "secret": S3_SECRET},
        sfhq={"threads": 2},
    )
    monkeypatch.delenv("FACELAKE_ROOT", raising=False)
    monkeypatch.setenv("FACELAKE_CONFIG", str(config))
    home = make_dagster_home(tmp_path / "home")
    materialize(SFHQ_ASSETS, cli_env(home, **IN_PROCESS, HF_HUB_OFFLINE="1"), partition="1")
    lake = s3_storage
    with DagsterInstance.from_config(str(home)) as instance:
        for asset in SFHQ_ASSETS[:5]:
            assert check_passed(instance, asset, "no_problems") is True, asset
        assert check_passed(instance, "sfhq_clip_features", "no_near_duplicates_above_claim") is True
        meta = metadata(instance, "sfhq_clip_features")
        assert meta["weights_verified"] is False and "are not here" in meta["weights_reason"]
        assert meta["near_duplicate_pairs"] == 0 and meta["claim_holds"] is True
    landmarks = table(lake, sfhq.LANDMARKS, sfhq.LANDMARKS_FILE)
    assert landmarks["name"].to_pylist() == fixture.names
    for row in landmarks.to_pylist():
        np.testing.assert_array_equal(np.array(row["points"], np.float32), fixture.images[row["name"]].points)
    data = stored_features(lake)
    expected = np.stack([fixture.images[n].features[FEATURE_KEY][0] for n in fixture.names])
    np.testing.assert_allclose(data.vectors.astype(np.float32), expected, atol=1e-3)
    assert data.space["embedder_name"] == "open_clip:ViT-L-14-336-quickgelu"
    assert data.space["embedder_weights_sha256"] == "unverified:ViT-L-14-336-quickgelu/openai"
    faces = table(lake, sfhq.FACE_EMBEDDINGS, sfhq.EMBEDDINGS_FILE)
    assert faces["name"].to_pylist() == fixture.names
    parser, _, _ = read_report(lake)
    assert parser.headings[-1] == "Text search" and len(parser.images) == 5
    assert (
        "no text encoder for the features' space (CLIP_ViTL_14@336 = ViT-L-14-336-quickgelu / openai)"
        in (parser.pre[-1])
    )

    env = clean_env(FACELAKE_CONFIG=str(config), HF_HUB_OFFLINE="1")
    done = run_facelake("search", "a smiling woman", "--asset", "sfhq_clip_features", cwd=tmp_path, env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(
        "facelake search: error: model \"open_clip ViT-L-14-336-quickgelu pretrained='openai'\" not found"
    ), done.stderr
    assert "To provide it:" in done.stderr and "HF_HUB_OFFLINE" in done.stderr

    done = run_facelake("sfhq", "describe", "--part", "1", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"SFHQ part 1: {fixture.folder}"
    assert done.stdout.splitlines()[-1] == "validation: OK"
    assert f"  {'feature rows':22s} {5:>9,}" in done.stdout.splitlines()
