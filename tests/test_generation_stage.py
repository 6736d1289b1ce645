"""The generation stage: webdataset shards (jpg + json) committed per shard, resumable after a kill, refused for
a variant packed in another identity space, every image regenerable alone; on a local and an S3 root."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from facelake.faces.identity import EmbedderProfile, EmbeddingSpaceMismatchError
from facelake.generation.contact_sheet import CONTACT_SHEET_FILE
from facelake.generation.generator import RANDOM_WEIGHTS_WARNING, Arc2FaceGenerator, Sampling, load_generator
from facelake.generation.identities import ReferenceIdentities
from facelake.generation.requests import render, requests_for
from facelake.generation.seeds import image_seeds
from facelake.generation.settings import GenerationSettings
from facelake.generation.shards import generated_image_shards, image_key, read_generated_index
from facelake.generation.stage import GenerationOptions, commit_generated_images
from facelake.hyperface.references import reference_tables
from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import iter_shard_images
from facelake.models.registry import ModelRegistry
from tests.test_generation_engine import SIZE, STEPS, tiny_components, unit_vectors

VARIANT = "tiny-arc"
ARCFACE = EmbedderProfile("arcface_onnx", 512, "a" * 64, True, 0.35)
OPTIONS = GenerationOptions(images_per_identity=3, beta=0.01, shard_identities=2, batch_size=4)


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Arc2FaceGenerator:
    tiny = tiny_components(tmp_path_factory)
    registry = ModelRegistry(tmp_path_factory.mktemp("cache"), paths=tiny.registry_paths())
    return load_generator(registry, Sampling(steps=STEPS, height=SIZE, width=SIZE))


def references(n: int = 5, profile: EmbedderProfile = ARCFACE, variant: str = VARIANT) -> pa.Table:
    """One identity shard of reference embeddings, written by HyperFace's own packing output code."""
    vectors = unit_vectors(n, seed=9, dimension=profile.dimension)
    [(shard, table)] = reference_tables(vectors, variant, profile.provenance(), shard_size=n)
    assert shard == 0 and table["identity_id"][0].as_py() == f"{variant}-0000000"
    return table


def images_artifact(storage: Storage) -> PartitionArtifact:
    return PartitionArtifact(storage, "hyperface", "images", VARIANT)


def commit(storage: Storage, generator: Arc2FaceGenerator, **kwargs):
    return commit_generated_images(
        images_artifact(storage),
        ReferenceIdentities.from_table(references()),
        generator,
        kwargs.pop("options", OPTIONS),
        code_version="test-1",
        owner="test",
        **kwargs,
    )


def tar_members(storage: Storage, uri: str) -> dict[str, bytes]:
    with storage.open(uri, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shards_hold_every_identitys_images_as_jpg_and_json(
    any_storage: Storage, generator: Arc2FaceGenerator
) -> None:
    result = commit(any_storage, generator)
    artifact = images_artifact(any_storage)
    manifest = artifact.require_manifest()
    assert manifest.rows == 5 * 3 and not result.outcome.reused
    paths = sorted(f.path for f in manifest.files)
    for shard in ("00000", "00001", "00002"):  # identities 0-1, 2-3, 4
        assert {f"shards/{shard}.tar", f"shards/{shard}.parquet", f"shards/{shard}.done.json"} <= set(paths)
    assert any(p.endswith(CONTACT_SHEET_FILE) for p in paths)
    members = tar_members(any_storage, artifact.uri("shards/00001.tar"))
    keys = [image_key(i, k) for i in (2, 3) for k in range(3)]
    assert list(members) == [f"{key}.{ext}" for key in keys for ext in ("jpg", "json")]
    image = Image.open(io.BytesIO(members["0000003-0002.jpg"]))
    assert image.format == "JPEG" and image.size == (SIZE, SIZE)
    record = json.loads(members["0000003-0002.json"])
    seeds = image_seeds(VARIANT, f"{VARIANT}-0000003", 2, 0)
    assert record["identity_id"] == f"{VARIANT}-0000003" and record["index"] == 2
    assert record["seeds"] == {"latent": seeds.latent, "embedding": seeds.embedding, "base": 0}
    assert record["beta"] == 0.01 and record["variant"] == VARIANT
    provenance = record["generator"]
    assert (
        provenance["random_init"] is True and provenance["steps"] == STEPS and provenance["guidance"] == 3.0
    )
    assert provenance["scheduler"] == "DPMSolverMultistepScheduler" and provenance["mode"] == "default"
    assert record["warning"] == RANDOM_WEIGHTS_WARNING
    assert record["identity_space"]["embedder_name"] == "arcface_onnx"
    index = read_generated_index(any_storage, artifact)
    assert index.num_rows == 15 and index["identity_id"].unique().to_pylist() == [
        f"{VARIANT}-{i:07d}" for i in range(5)
    ]
    assert index["latent_seed"].to_pylist()[-1] == image_seeds(VARIANT, f"{VARIANT}-0000004", 2).latent
    assert set(index["generator_random_init"].to_pylist()) == {True}
    cosines = index["noise_cosine"].to_numpy()
    assert np.all(cosines < 1.0) and np.all(cosines > 0.9)
    assert Image.open(io.BytesIO(result.contact_sheet)).format == "PNG"
    metadata = result.metadata()
    assert metadata["images"] == 15 and metadata["identities"] == 5 and metadata["shards"] == 3
    assert metadata["images_generated"] == 15 and metadata["images_per_second"] > 0
    assert metadata["random_init"] is True and metadata["warning"] == RANDOM_WEIGHTS_WARNING
    again = commit(any_storage, generator)
    assert again.outcome.reused and again.counter.images == 0 and again.contact_sheet == result.contact_sheet


def test_a_run_killed_mid_variant_resumes_without_regenerating_committed_shards(
    local_storage: Storage, generator: Arc2FaceGenerator
) -> None:
    artifact = images_artifact(local_storage)
    logged: list[str] = []

    def killed_after_first_shard(message: str) -> None:
        logged.append(message)
        if message.startswith("shards/"):
            raise KeyboardInterrupt("killed")  # the process dies after shard 0 committed

    with pytest.raises(KeyboardInterrupt):
        commit(local_storage, generator, log=killed_after_first_shard)
    assert artifact.manifest() is None
    shard_lines = [m for m in logged if m.startswith("shards/")]
    assert len(shard_lines) == 1 and shard_lines[0].startswith("shards/00000: 6 rows")
    progress = [m for m in logged if m.startswith("generation hyperface_images[")]
    assert progress and "/15 images" in progress[0] and "ETA" in progress[0], "progress: done/total, ETA"
    tar0 = artifact.uri("shards/00000.tar")
    first = local_storage.read_bytes(tar0)
    stamp = local_storage.fs.info(tar0)["mtime"]
    assert local_storage.exists(artifact.uri("shards/00000.done.json"))
    assert not local_storage.exists(artifact.uri("shards/00001.done.json"))

    resumed = commit(local_storage, generator)
    extra = resumed.outcome.manifest.extra
    assert extra["shards_reused"] == 1 and extra["shards_done_now"] == 2
    assert resumed.counter.images == 15 - 6 and resumed.counter.shards == 2  # shard 0 was not regenerated
    assert local_storage.read_bytes(tar0) == first and local_storage.fs.info(tar0)["mtime"] == stamp
    assert resumed.outcome.manifest.rows == 15
    entry = next(f for f in resumed.outcome.manifest.files if f.path == "shards/00000.tar")
    assert entry.sha256 == hashlib.sha256(first).hexdigest() and entry.size == len(first)


def test_a_truncated_committed_tar_is_regenerated_alone(
    local_storage: Storage, generator: Arc2FaceGenerator
) -> None:
    commit(local_storage, generator)
    artifact = images_artifact(local_storage)
    tar1 = artifact.uri("shards/00001.tar")
    whole = local_storage.read_bytes(tar1)
    local_storage.write_bytes(tar1, whole[:100])
    redone = commit(local_storage, generator, force=True)
    assert redone.counter.shards == 1 and redone.counter.images == 6
    assert local_storage.read_bytes(tar1) == whole  # byte-identical regeneration


def test_a_variant_packed_in_dlib_space_is_refused_before_anything_is_written(
    local_storage: Storage, generator: Arc2FaceGenerator
) -> None:
    dlib = EmbedderProfile("dlib_resnet_v1", 128, "d" * 64, False, 0.18)
    identities = ReferenceIdentities.from_table(references(4, dlib))
    with pytest.raises(EmbeddingSpaceMismatchError) as caught:
        commit_generated_images(
            images_artifact(local_storage), identities, generator, OPTIONS, code_version="1", owner="t"
        )
    assert "dlib_resnet_v1 (128-d" in str(caught.value) and "arcface_onnx (512-d" in str(caught.value)
    assert not local_storage.exists(images_artifact(local_storage).prefix)


def test_an_image_from_the_shards_regenerates_alone(
    local_storage: Storage, generator: Arc2FaceGenerator
) -> None:
    commit(local_storage, generator)
    identities = ReferenceIdentities.from_table(references())
    [rendered] = list(render(generator, identities, requests_for(identities, [3], [1]), OPTIONS.beta, 1))
    images = rendered.images
    stored = tar_members(local_storage, images_artifact(local_storage).uri("shards/00001.tar"))[
        "0000003-0001.jpg"
    ]
    decoded = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"), np.float64)
    alone = np.asarray(Image.open(io.BytesIO(_jpeg(images[0]))).convert("RGB"), np.float64)
    difference = np.abs(decoded - alone)  # the same pixels, up to float rounding before the JPEG
    assert difference.max() <= 4.0 and difference.mean() < 0.05


def _jpeg(image: np.ndarray) -> bytes:
    from facelake.generation.shards import encode_jpeg

    return encode_jpeg(image, OPTIONS.jpeg_quality)


def test_generated_shards_read_back_through_the_webdataset_reader(
    local_storage: Storage, generator: Arc2FaceGenerator
) -> None:
    commit(local_storage, generator)
    shards = generated_image_shards(local_storage, images_artifact(local_storage))
    assert [s.shard_id for s in shards] == [0, 1, 2] and [len(s) for s in shards] == [6, 6, 3]
    batches = list(iter_shard_images(local_storage, shards[2], batch_size=2))
    assert [b.keys for b in batches] == [["0000004-0000", "0000004-0001"], ["0000004-0002"]]
    assert batches[0].images[0].shape == (SIZE, SIZE, 3)
    assert batches[0].sample_ids.tolist() == [12, 13] and batches[0].metadata[0]["identity_index"] == 4


def test_reference_tables_are_validated(generator: Arc2FaceGenerator) -> None:
    table = references()
    with pytest.raises(Exception, match="lack columns"):
        ReferenceIdentities.from_table(table.drop_columns(["embedder_name"]))
    with pytest.raises(Exception, match="variants"):
        ReferenceIdentities.from_table(table, variant="other")
    identities = ReferenceIdentities.from_table(table.drop_columns(["identity_index"]))
    assert identities.identity_index.tolist() == [0, 1, 2, 3, 4]
    shards = identities.shards(2)
    assert {k: v.rows.tolist() for k, v in shards.items()} == {0: [0, 1], 1: [2, 3], 2: [4]}
    changed = ReferenceIdentities.from_table(references(5, variant=VARIANT).slice(0, 4))
    assert changed.shards(2)[1].fingerprint == shards[1].fingerprint  # same rows, same input


def test_settings_compose_options_and_sampling() -> None:
    settings = GenerationSettings(images_per_identity=8, beta=0.02, few_step=True, height=64, width=64)
    assert settings.options().images_per_identity == 8 and settings.options().beta == 0.02
    sampling = settings.sampling()
    assert sampling.few_step and sampling.num_steps == 2 and sampling.height == 64
    default = GenerationSettings()
    assert (default.images_per_identity, default.beta, default.sampling().num_steps) == (64, 0.005, 25)
    with pytest.raises(Exception, match="multiple"):
        GenerationSettings(height=100)
