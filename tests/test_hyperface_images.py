"""HyperFace generation end to end on tiny sizes, on a local and an S3 root (issue 14).

An ArcFace-signature ONNX model with RANDOM TEST WEIGHTS (labelled by its sidecar) embeds real face crops
through the model registry into a gallery table; HyperFace packs a variant in that 512-d space; and
``hyperface_images`` generates identities x images with tiny random Arc2Face components whose
``arcface.onnx`` is the same file, so the generator's identity space is the variant's. Every count must agree:
identities x images per identity, per shard and per identity; a rerun reuses the partition; without
generator weights the asset fails saying what to provide.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from facelake.faces.identity import embedding_table
from facelake.generation.shards import generated_image_shards, read_generated_index
from facelake.generation.variant import images_artifact
from facelake.hyperface import references as hyperface
from facelake.lake.images import decode_rgb
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import iter_shard_images
from facelake.models.registry import ModelRegistry
from facelake.settings import load_settings
from synthetic.arc2face_tiny import build_arc2face_components
from synthetic.arcface_tiny import build_test_arcface, write_random_sidecar
from synthetic.face_photos import PEOPLE, varied_crops
from tests.cli_helpers import step_failure_text
from tests.test_generation_engine import SIZE, STEPS
from tests.test_hyperface_assets import materialized_metadata, run

GALLERY, REFERENCE, IMAGES = "hyperface_gallery", "hyperface_reference_embeddings", "hyperface_images"
COUNT_CHECK = AssetCheckKey(AssetKey(IMAGES), "every_identity_has_its_images")
CURATION = ["hyperface_aligned", "hyperface_identity_audit", "hyperface_leakage", "hyperface_dataset"]
VARIANT, IDENTITIES, PER_IDENTITY, SHARD_IDENTITIES = "tiny", 6, 3, 4


@dataclass
class TinyModels:
    paths: dict[str, str]
    arcface: Path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> TinyModels:
    """A random-weight ArcFace-signature model and tiny Arc2Face folders holding that same file."""
    folder = tmp_path_factory.mktemp("models")
    arcface = folder / "arcface.onnx"
    build_test_arcface(arcface)
    write_random_sidecar(arcface)
    tiny = build_arc2face_components(folder / "arc2face", preset="tiny", arcface_onnx=arcface)
    write_random_sidecar(tiny.arc2face / "arcface.onnx")
    return TinyModels({**tiny.registry_paths(), "arcface": str(arcface)}, arcface)


@pytest.fixture(scope="module")
def gallery_file(tiny_models, tmp_path_factory) -> str:
    """Real face crops of the two people that ship offline, embedded by the registry's ``arcface`` embedder."""
    registry = ModelRegistry(tmp_path_factory.mktemp("cache"), paths=tiny_models.paths)
    embedder = registry.embedder("arcface")
    crops = [crop for person in PEOPLE for crop in varied_crops(person, 12, seed=3)]
    images = [decode_rgb(crop.jpeg) for crop in crops]
    vectors = embedder.embed(images, np.stack([c.box for c in crops]), np.stack([c.landmarks for c in crops]))
    assert embedder.profile.random_init, "the test embedder is labelled random"
    table = embedding_table(vectors, embedder.profile, {"sample_id": np.arange(len(crops), dtype=np.int64)})
    path = tmp_path_factory.mktemp("gallery") / "arcface_gallery.parquet"
    pq.write_table(table, path)
    return str(path)


def write_config(path: Path, root: str, gallery: str, models: dict[str, str], s3: dict | None = None) -> Path:
    generation = {
        "images_per_identity": PER_IDENTITY,
        "shard_identities": SHARD_IDENTITIES,
        "batch_size": 4,
        "steps": STEPS,
        "height": SIZE,
        "width": SIZE,
        "contact_sheet_identities": 2,
        "contact_sheet_images": 2,
    }
    variant = {"identities": IDENTITIES, "algorithm": "full", "iterations": 10, "min_angle_deg": 0.0}
    config = {
        "root": root,
        "models": {"torch_threads": 1, "paths": models},
        "hyperface": {
            "gallery": {"source": "table", "uris": [gallery]},
            "variants": {VARIANT: {**variant, "generation": generation}},
            "shard_size": 4,
        },
        "generation": {"images_per_identity": 64},  # the variant's override wins
        "curation": {"real_sets": ["hyperface_gallery"], "leakage_top_k": 5},
    }
    if s3:
        config["s3"] = s3
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Generated:
    lake: Storage
    first: object
    again: object
    index: pa.Table
    references: pa.Table
    curated: object


def _generate(config: Path) -> Iterator[Generated]:
    with pytest.MonkeyPatch.context() as env:
        env.delenv("FACELAKE_ROOT", raising=False)
        env.setenv("FACELAKE_CONFIG", str(config))
        lake = load_settings().storage()
        instance = DagsterInstance.ephemeral()
        assert run([GALLERY], instance).success
        assert run([REFERENCE], instance, VARIANT).success
        first = run([IMAGES], instance, VARIANT)
        again = run([IMAGES], instance, VARIANT)
        curated = run(CURATION, instance, VARIANT, raise_on_error=False)
        artifact = images_artifact(lake, VARIANT)
        index = read_generated_index(lake, artifact)
        references = hyperface.read_reference_embeddings(lake, hyperface.reference_artifact(lake, VARIANT))
        yield Generated(lake, first, again, index, references, curated)


@pytest.fixture(scope="module", params=["local", "s3"])
def generated(request, tiny_models, gallery_file, tmp_path_factory) -> Iterator[Generated]:
    base = tmp_path_factory.mktemp(f"generated-{request.param}")
    if request.param == "local":
        yield from _generate(
            write_config(base / "facelake.yaml", str(base / "lake"), gallery_file, tiny_models.paths)
        )
        return
    from tests.conftest import S3_KEY, S3_SECRET

    endpoint = request.getfixturevalue("s3_endpoint")
    s3 = {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET}
    bucket = f"gen-{base.name[-8:].lower().replace('_', '-')}"
    Storage(f"s3://{bucket}/root", load_settings(s3=s3).s3.options()).fs.mkdir(bucket)
    yield from _generate(
        write_config(base / "facelake.yaml", f"s3://{bucket}/root", gallery_file, tiny_models.paths, s3)
    )


def test_every_count_agrees_identities_times_images(generated: Generated) -> None:
    assert generated.first.success
    index = generated.index
    assert index.num_rows == IDENTITIES * PER_IDENTITY
    ids = generated.references["identity_id"].to_pylist()
    assert sorted(set(index["identity_id"].to_pylist())) == sorted(ids)
    for identity in ids:
        rows = [
            i
            for i, v in zip(index["index"].to_pylist(), index["identity_id"].to_pylist(), strict=True)
            if v == identity
        ]
        assert sorted(rows) == list(range(PER_IDENTITY)), identity
    shards = sorted(set(index["shard"].to_pylist()))
    assert shards == [0, 1]  # identities 0-3 and 4-5 in shards of 4
    metadata = materialized_metadata(generated.first, IMAGES)
    assert metadata["images"] == IDENTITIES * PER_IDENTITY == metadata["rows"]
    assert metadata["identities"] == IDENTITIES and metadata["images_per_identity"] == PER_IDENTITY
    assert metadata["images_per_second"] > 0 and metadata["shards_done_now"] == 2
    assert "contact_sheet" in metadata


def test_the_images_decode_through_the_webdataset_reader(generated: Generated) -> None:
    shards = generated_image_shards(generated.lake, images_artifact(generated.lake, VARIANT))
    images = [
        image
        for shard in shards
        for batch in iter_shard_images(generated.lake, shard)
        for image in batch.images
    ]
    assert len(images) == IDENTITIES * PER_IDENTITY
    assert {image.shape for image in images} == {(SIZE, SIZE, 3)}


def test_random_generator_weights_are_said_everywhere(generated: Generated) -> None:
    metadata = materialized_metadata(generated.first, IMAGES)
    assert metadata["random_init"] is True and "random" in metadata["warning"].lower()
    assert set(generated.index["generator_random_init"].to_pylist()) == {True}
    assert set(generated.index["embedder_random_init"].to_pylist()) == {True}
    assert set(generated.index["embedder_name"].to_pylist()) == {"arcface_onnx"}


def test_the_count_check_passes_and_a_rerun_reuses_the_partition(generated: Generated) -> None:
    [check] = [e for e in generated.first.get_asset_check_evaluations() if e.asset_check_key == COUNT_CHECK]
    assert check.passed
    assert generated.again.success
    metadata = materialized_metadata(generated.again, IMAGES)
    assert metadata["reused_committed_partition"] is True and metadata["images_generated"] == 0


def test_without_generator_weights_the_asset_says_what_to_provide(
    tiny_models, gallery_file, tmp_path, monkeypatch
) -> None:
    arcface_only = {"arcface": tiny_models.paths["arcface"]}
    config = write_config(tmp_path / "c.yaml", str(tmp_path / "lake"), gallery_file, arcface_only)
    monkeypatch.delenv("FACELAKE_ROOT", raising=False)
    monkeypatch.setenv("FACELAKE_CONFIG", str(config))
    monkeypatch.setenv("FACELAKE_MODELS__CACHE_DIR", str(tmp_path / "empty-cache"))
    instance = DagsterInstance.ephemeral()
    assert run([GALLERY], instance).success and run([REFERENCE], instance, VARIANT).success
    result = run([IMAGES], instance, VARIANT, raise_on_error=False)
    assert not result.success
    text = step_failure_text(result)
    assert (
        "no generator weights" in text
        and "the Arc2Face generator needs stable-diffusion-v1-5, arc2face" in text
    )
    assert images_artifact(load_settings().storage(), VARIANT).manifest() is None, "nothing committed"


def test_curation_runs_to_an_empty_dataset_and_says_why(generated: Generated) -> None:
    """Random generator weights make no faces: every stage runs, the counts say so, the empty check fails."""
    result = generated.curated
    generated_images = IDENTITIES * PER_IDENTITY
    aligned = materialized_metadata(result, "hyperface_aligned")
    assert aligned["generated"] == generated_images
    assert aligned["aligned"] + aligned["no_face"] + aligned["several_faces"] + aligned.get(
        "unreadable", 0
    ) == (generated_images)
    assert (
        aligned["aligned"] == 0 and aligned["random_init"] is True and "random" in aligned["warning"].lower()
    )
    dataset = materialized_metadata(result, "hyperface_dataset")
    assert dataset["empty"] is True
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["counts_add_up"] is True
    assert checks["not_empty"] is False, "an empty dataset fails its check, it does not pass on nothing"


def test_the_catalog_views_hold_the_committed_rows(generated: Generated) -> None:
    from facelake.catalog import open_catalog

    with open_catalog(generated.lake) as conn:

        def count(sql: str) -> int:
            return conn.execute(sql).fetchone()[0]

        images = IDENTITIES * PER_IDENTITY
        assert count(f"SELECT count(*) FROM hyperface_images WHERE part = '{VARIANT}'") == images
        assert count("SELECT count(*) FROM hyperface_aligned WHERE status = 'no_face'") == images
        assert count("SELECT count(DISTINCT identity_id) FROM hyperface_aligned") == IDENTITIES
        for view in ("hyperface_identity_audit", "hyperface_leakage", "hyperface_dataset"):
            assert count(f"SELECT count(*) FROM {view}") == 0, view


def test_exporting_the_empty_dataset_says_so(generated: Generated, tmp_path: Path) -> None:
    """``facelake hyperface export`` of the empty dataset: exit status 3, the summary files only."""
    from tests.test_facelake_cli import lake_env, run_facelake

    env = lake_env(generated.lake)
    out = tmp_path / "exported"
    done = run_facelake("hyperface", "export", "--variant", VARIANT, "--to", str(out), cwd=tmp_path, env=env)
    assert done.returncode == 3, done.stderr
    assert "is empty: nothing to train on" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "dataset.parquet", "labels.parquet"]
