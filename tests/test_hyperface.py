"""HyperFace glue around the packer: one-space galleries, identity shards, resume, reuse and the plot."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facelake.faces.identity import EmbedderProfile, EmbeddingSpaceMismatchError, embedding_table, table_space
from facelake.hyperface import references as hyperface
from facelake.hyperface.packing import StorageCheckpointer
from facelake.hyperface.references import (
    assemble_gallery,
    commit_gallery,
    commit_reference_embeddings,
    configured_sources,
    convergence_plot,
    identity_id,
    packing_config,
    read_gallery,
    read_reference_embeddings,
    reference_artifact,
    reference_shard_ids,
    reference_tables,
)
from facelake.hyperface.settings import HyperfaceGallerySettings, HyperfaceVariant
from facelake.lake.errors import FacelakeError, InputError
from facelake.lake.plots import png_markdown
from facelake.lake.storage import Storage

DLIB = EmbedderProfile("dlib_resnet_v1", 128, "d" * 64, False, 0.18)
OTHER_WEIGHTS = EmbedderProfile("dlib_resnet_v1", 128, "e" * 64, False, 0.18)
ARCFACE = EmbedderProfile("arcface_r100", 512, "a" * 64, True, 0.35)


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def gallery_table(n: int, profile: EmbedderProfile = DLIB, seed: int = 0, scale: float = 1.0) -> pa.Table:
    ids = {"sample_id": pa.array(np.arange(n, dtype=np.int64) + 1000 * seed), "face_index": pa.repeat(0, n)}
    return embedding_table(unit_rows(n, profile.dimension, seed) * scale, profile, ids)


def write_parquet(path: Path, table: pa.Table) -> str:
    pq.write_table(table, path)
    return str(path)


# --- the gallery -------------------------------------------------------------------------------------


def test_gallery_joins_sources_of_one_space_renormalised_with_their_ids():
    gallery = assemble_gallery(
        [("a.parquet", gallery_table(30, scale=3.0)), ("b.parquet", gallery_table(20, seed=1))]
    )
    assert gallery.vectors.shape == (50, 128) and gallery.dimension == 128
    np.testing.assert_allclose(np.linalg.norm(gallery.vectors, axis=1), 1.0, atol=1e-6)
    table = gallery.table
    assert table["gallery_index"].to_pylist() == list(range(50))
    assert table["source"].to_pylist() == ["a.parquet"] * 30 + ["b.parquet"] * 20
    assert table["source_row"].to_pylist() == list(range(30)) + list(range(20))
    assert table["sample_id"].to_pylist()[28:32] == [28, 29, 1000, 1001]
    np.testing.assert_allclose(gallery.vectors[:30], unit_rows(30, 128, 0), atol=1e-6)
    assert table_space(table) == DLIB.provenance() == gallery.space


def test_gallery_refuses_two_sources_in_different_spaces_naming_both():
    with pytest.raises(EmbeddingSpaceMismatchError, match=r"a\.parquet and b\.parquet.*refusing to mix"):
        assemble_gallery([("a.parquet", gallery_table(10)), ("b.parquet", gallery_table(10, OTHER_WEIGHTS))])


def test_gallery_refuses_one_table_that_mixes_spaces():
    mixed = pa.concat_tables([gallery_table(5), gallery_table(5, OTHER_WEIGHTS)])
    with pytest.raises(EmbeddingSpaceMismatchError, match=r"mixed\.parquet: its rows mix embedding spaces"):
        assemble_gallery([("mixed.parquet", mixed)])


def test_gallery_refuses_rows_without_provenance():
    bare = gallery_table(5).select(["sample_id", "embedding"])
    with pytest.raises(InputError, match=r"bare\.parquet: table lacks provenance columns"):
        assemble_gallery([("bare.parquet", bare)])


def test_gallery_refuses_width_that_contradicts_the_declared_dimension():
    table = gallery_table(5)
    narrow = embedding_table(unit_rows(5, 64), EmbedderProfile("x", 64, "f" * 64, False, 0.2))
    forged = table.set_column(table.schema.get_field_index("embedding"), "embedding", narrow["embedding"])
    with pytest.raises(InputError, match=r"forged\.parquet: embeddings are 64-d but the provenance says"):
        assemble_gallery([("forged.parquet", forged)])


def test_gallery_refuses_zero_rows_and_ragged_lists():
    table = gallery_table(4)
    zeros = np.zeros((4, 128), np.float32)
    zero = embedding_table(zeros, DLIB)
    with pytest.raises(InputError, match=r"zero\.parquet: embedding row\(s\) \[0, 1, 2, 3\] are zero"):
        assemble_gallery([("zero.parquet", zero)])
    ragged = table.set_column(
        table.schema.get_field_index("embedding"),
        "embedding",
        pa.array([[0.1] * 128, [0.1] * 127, [0.1] * 128, [1.0] * 128]),
    )
    with pytest.raises(InputError, match=r"ragged\.parquet: 'embedding' rows have different lengths"):
        assemble_gallery([("ragged.parquet", ragged)])


def test_gallery_accepts_plain_float64_lists():
    table = gallery_table(6)
    as_lists = pa.array(unit_rows(6, 128).astype(np.float64).tolist())
    plain = table.set_column(table.schema.get_field_index("embedding"), "embedding", as_lists)
    gallery = assemble_gallery([("lists.parquet", plain)])
    assert gallery.vectors.dtype == np.float32
    assert pa.types.is_fixed_size_list(gallery.table.schema.field("embedding").type)
    np.testing.assert_allclose(gallery.vectors, unit_rows(6, 128), atol=1e-6)


def test_gallery_sample_is_seeded_and_keeps_source_order():
    sources = [("a.parquet", gallery_table(100))]
    first = assemble_gallery(sources, max_rows=40, seed=3)
    again = assemble_gallery(sources, max_rows=40, seed=3)
    other = assemble_gallery(sources, max_rows=40, seed=4)
    rows = first.table["source_row"].to_pylist()
    assert len(rows) == 40 and rows == sorted(rows) and len(set(rows)) == 40
    assert rows == again.table["source_row"].to_pylist() != other.table["source_row"].to_pylist()
    assert first.table["gallery_index"].to_pylist() == list(range(40))


def test_configured_table_sources_and_laion_parts(tmp_path):
    lake = Storage(str(tmp_path / "lake"))
    uri = write_parquet(tmp_path / "g.parquet", gallery_table(8))
    table_settings = HyperfaceGallerySettings(source="table", uris=["{sources}/g.parquet"])
    [source] = configured_sources(lake, table_settings, expand=lambda u: u.format(sources=str(tmp_path)))
    assert source.name == uri and source.load().num_rows == 8
    missing = HyperfaceGallerySettings(source="table", uris=[str(tmp_path / "nope.parquet")])
    with pytest.raises(InputError, match=r"nope\.parquet: gallery embedding table not found"):
        configured_sources(lake, missing)
    with pytest.raises(FacelakeError, match="uris is empty"):
        configured_sources(lake, HyperfaceGallerySettings(source="table"))

    from facelake.laion import artifacts

    laion = HyperfaceGallerySettings(source="laion_face_embeddings")
    with pytest.raises(FacelakeError, match="no committed laion_face_embeddings part"):
        configured_sources(lake, laion, laion_embeddings=artifacts.embeddings, laion_parts=["00000", "00001"])
    named = HyperfaceGallerySettings(source="laion_face_embeddings", parts=["00001"])
    with pytest.raises(InputError, match=r"embeddings/00001: laion_face_embeddings part not committed"):
        configured_sources(lake, named, laion_embeddings=artifacts.embeddings)


def test_a_committed_laion_face_embeddings_part_is_a_gallery_source(tmp_path):
    from facelake.laion import artifacts
    from facelake.lake.commit import materialize_partition
    from facelake.lake.shard_stage import run_shard_stage

    lake = Storage(str(tmp_path / "lake"))
    faces = gallery_table(9).append_column("key", pa.array([f"{i:09d}" for i in range(9)]))
    outcome = materialize_partition(
        artifacts.embeddings(lake, "00002"),
        {"test": 1},
        "1",
        "test",
        lambda attempt: run_shard_stage(attempt, [0], lambda _: faces).written(),
        keep=("shards/",),
    )
    settings = HyperfaceGallerySettings(source="laion_face_embeddings")
    [source] = configured_sources(
        lake, settings, laion_embeddings=artifacts.embeddings, laion_parts=["00000", "00001", "00002"]
    )
    assert source.name == "laion_face_embeddings[00002]"
    assert source.fingerprint == outcome.manifest.content_hash
    gallery = assemble_gallery([(source.name, source.load())])
    assert gallery.table["key"].to_pylist() == faces["key"].to_pylist()
    assert {"sample_id", "face_index"} <= set(gallery.table.column_names)
    np.testing.assert_allclose(gallery.vectors, unit_rows(9, 128), atol=1e-6)


def test_commit_gallery_is_a_no_op_when_sources_are_unchanged(tmp_path):
    lake = Storage(str(tmp_path / "lake"))
    settings = HyperfaceGallerySettings(
        source="table", uris=[write_parquet(tmp_path / "g.parquet", gallery_table(12))]
    )
    sources = configured_sources(lake, settings)
    first = commit_gallery(lake, sources, settings, "1", "test")
    second = commit_gallery(lake, sources, settings, "1", "test")
    assert not first.reused and second.reused and second.manifest.created_at == first.manifest.created_at
    gallery = read_gallery(lake)
    assert gallery.vectors.shape == (12, 128) and first.manifest.extra["space"] == DLIB.provenance()


# --- identity shards -----------------------------------------------------------------------------------


def test_reference_shards_carry_stable_ids_shard_and_provenance():
    points = unit_rows(25, 128)
    shards = reference_tables(points, "demo", ARCFACE.provenance() | {"embedder_dimension": 128}, 10)
    assert [s for s, _ in shards] == [0, 1, 2]
    assert [t.num_rows for _, t in shards] == [10, 10, 5]
    last = shards[2][1]
    assert last["identity_id"].to_pylist() == [f"demo-{i:07d}" for i in range(20, 25)]
    assert last["identity_index"].to_pylist() == list(range(20, 25))
    assert set(last["shard"].to_pylist()) == {2} and set(last["variant"].to_pylist()) == {"demo"}
    assert last.schema.field("embedding").type == pa.list_(pa.float32(), 128)
    assert set(last["embedder_random_init"].to_pylist()) == {True}
    joined = np.concatenate([hyperface.embedding_matrix("t", t) for _, t in shards])
    np.testing.assert_array_equal(joined, points)
    assert identity_id("50k", 49_999) == "50k-0049999"


def test_packing_config_maps_the_variant_and_passes_extra_fields():
    variant = HyperfaceVariant(
        identities=300, iterations=7, alpha=0.25, algorithm="full", seed=5, packing={"against_all": True}
    )
    config = packing_config(variant)
    assert (config.identities, config.iterations, config.alpha, config.algorithm, config.seed) == (
        300,
        7,
        0.25,
        "full",
        5,
    )
    assert config.against_all is True
    with pytest.raises(ValueError, match=r"repeats \['seed'\]"):
        packing_config(HyperfaceVariant(identities=3, iterations=1, packing={"seed": 1}))
    typo = HyperfaceVariant(identities=3, iterations=1, packing={"learnig_rate": 0.1})
    with pytest.raises(
        FacelakeError, match=r"(?s)hyperface.variants.bad: not a valid packing config.*learnig_rate"
    ):
        hyperface.validate_variants({"ok": variant, "bad": typo})


# --- packing a variant ---------------------------------------------------------------------------------

VARIANT = HyperfaceVariant(
    identities=60, algorithm="full", iterations=40, alpha=0.5, seed=1, packing={"checkpoint_every": 10}
)


@pytest.fixture
def committed_gallery(tmp_path):
    lake = Storage(str(tmp_path / "lake"))
    settings = HyperfaceGallerySettings(
        source="table", uris=[write_parquet(tmp_path / "g.parquet", gallery_table(150))]
    )
    commit_gallery(lake, configured_sources(lake, settings), settings, "1", "test")
    return lake, read_gallery(lake)


def commit_variant(lake, variant=VARIANT, name="tiny", **kwargs):
    return commit_reference_embeddings(
        lake, name, variant, shard_size=25, code_version="1", owner="test", **kwargs
    )


def test_a_variant_commits_identity_shards_plot_and_report_then_is_reused(committed_gallery):
    lake, gallery = committed_gallery
    outcome, run = commit_variant(lake)
    artifact = reference_artifact(lake, "tiny")
    assert not outcome.reused and run is not None and not run.resumed
    assert reference_shard_ids(artifact) == [0, 1, 2]
    assert {f.path.rsplit("/", 1)[-1] for f in outcome.manifest.files} == {
        "identities-00000.parquet",
        "identities-00001.parquet",
        "identities-00002.parquet",
        "convergence.png",
        "packing.json",
    }
    table = read_reference_embeddings(lake, artifact)
    assert table["identity_id"].to_pylist() == [f"tiny-{i:07d}" for i in range(60)]
    assert table_space(table) == gallery.space
    np.testing.assert_allclose(np.linalg.norm(hyperface.embedding_matrix("t", table), axis=1), 1.0, atol=1e-5)
    report = outcome.manifest.extra
    assert report["metrics"]["min_angle_deg"] == pytest.approx(run.result.metrics["min_angle_deg"])
    assert report["metrics"]["min_angle_deg"] > report["metrics"]["initial_min_angle_deg"]
    assert report["shards"] == 3 and report["embedder_random_init"] is False
    assert not lake.exists(hyperface.checkpoint_folder(lake, "tiny")), (
        "checkpoints are deleted after the commit"
    )
    assert read_reference_embeddings(lake, artifact, shards=[1])["identity_index"].to_pylist()[0] == 25
    with pytest.raises(InputError, match=r"identity shards \[7\] are not committed"):
        read_reference_embeddings(lake, artifact, shards=[7])

    lake.rm(hyperface.committed_uri(hyperface.gallery_artifact(lake), "gallery.parquet"))
    again, rerun = commit_variant(lake)  # reused without reading the gallery
    assert again.reused and rerun is None and again.manifest.created_at == outcome.manifest.created_at
    other_bound = VARIANT.model_copy(update={"min_angle_deg": 5.0})
    assert commit_variant(lake, variant=other_bound)[0].reused, "a new check bound never re-packs"


class DiesAfterFirstSave(StorageCheckpointer):
    """A checkpointer whose process 'dies' right after its first checkpoint is on storage."""

    def save(self, state):
        super().save(state)
        raise KeyboardInterrupt("killed after the first checkpoint")


def test_a_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
    committed_gallery, tmp_path
):
    lake, _ = committed_gallery
    with pytest.raises(KeyboardInterrupt):
        commit_variant(lake, checkpointer_factory=DiesAfterFirstSave)
    artifact = reference_artifact(lake, "tiny")
    assert artifact.manifest() is None
    [checkpoint] = lake.find(hyperface.checkpoint_folder(lake, "tiny"))
    assert checkpoint.endswith(".npz")
    artifact.begin({}, "x")  # what the next attempt does first: the cleanup must leave the checkpoint alone
    assert lake.exists(checkpoint)

    outcome, run = commit_variant(lake)
    assert run.resumed and run.resumed_step == 10
    assert outcome.manifest.extra["resumed_from_checkpoint"] is True
    assert not lake.exists(checkpoint)

    fresh = Storage(str(tmp_path / "fresh"))
    settings = HyperfaceGallerySettings(source="table", uris=[str(tmp_path / "g.parquet")])
    commit_gallery(fresh, configured_sources(fresh, settings), settings, "1", "test")
    _, uninterrupted = commit_variant(fresh)
    np.testing.assert_allclose(run.result.points, uninterrupted.result.points, atol=1e-6)


def test_a_changed_config_never_resumes_another_configs_checkpoint(committed_gallery):
    lake, _ = committed_gallery
    with pytest.raises(KeyboardInterrupt):
        commit_variant(lake, checkpointer_factory=DiesAfterFirstSave)
    changed = VARIANT.model_copy(update={"seed": 2})
    _, run = commit_variant(lake, variant=changed)
    assert not run.resumed


def test_reading_a_variant_whose_shards_mix_spaces_is_refused(committed_gallery):
    lake, _ = committed_gallery
    commit_variant(lake)
    artifact = reference_artifact(lake, "tiny")
    uri = hyperface.committed_uri(artifact, "identities-00001.parquet")
    table = pq.read_table(uri)
    index = table.schema.get_field_index("embedder_weights_sha256")
    pq.write_table(
        table.set_column(index, "embedder_weights_sha256", pa.repeat("0" * 64, table.num_rows)), uri
    )
    with pytest.raises(EmbeddingSpaceMismatchError, match="rows mix embedding spaces"):
        read_reference_embeddings(lake, artifact)


# --- the plot ------------------------------------------------------------------------------------------


def test_convergence_plot_is_a_png_and_embeds_as_markdown():
    history = [{"step": s, "loss": 1.0 / (s + 1), "min_angle_deg": 40 + s} for s in range(0, 100, 10)]
    png = convergence_plot(history, title="t")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (900, 340)
    assert len(set(np.asarray(image.convert("L")).ravel().tolist())) > 10, "the plot has drawn content"
    markdown = png_markdown(png, "convergence")
    assert markdown.startswith("![convergence](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1][:-1]) == png
    assert Image.open(io.BytesIO(convergence_plot([]))).format == "PNG"


def test_settings_name_the_default_variants_and_refuse_bad_keys():
    from pydantic import ValidationError

    from facelake.hyperface.settings import HyperfaceSettings

    settings = HyperfaceSettings()
    assert list(settings.variants) == ["demo", "10k", "50k"] and settings.shard_size == 1000
    assert (
        settings.variants["50k"].algorithm == "stochastic" and settings.variants["10k"].identities == 10_000
    )
    with pytest.raises(ValidationError, match="must be partition keys"):
        HyperfaceSettings(variants={"a b": {"identities": 2, "iterations": 1}})
    with pytest.raises(ValidationError, match="learning_rate"):
        HyperfaceSettings(variants={"x": {"identities": 2, "iterations": 1, "learning_rate": 0.1}})
