"""CLIP assets through ``dagster.materialize`` on the demo LAION world with a TINY saved open_clip model
(a ``local-dir:`` folder of random weights, loaded through the real path): embeddings in clip-retrieval's
layout on local disk and S3, resume at the asset level, the index (exact below the threshold, faiss above it
with its recall), the probe sheets, the catalog views, CelebA-HQ, near-duplicates across both with the
blocking check (passing, then failing on a planted kept pair), and the refusal of two spaces."""

from __future__ import annotations

import io

import dagster
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, Definitions

from assets.clip import NO_KEPT_PAIR_CHECK
from dagster_project.definitions import build_definitions
from facelake.catalog import open_catalog
from facelake.clip import encoder as clip_encoder
from facelake.clip import model as clip_model
from facelake.clip import settings as clip_settings
from facelake.clip.catalog import KEEP_FILE, clip_artifact
from facelake.clip.layout import combine, read_partition
from facelake.clip.model import ClipModelSpec, load_clip, save_local_dir
from facelake.clip.settings import ClipSettings
from facelake.laion.artifacts import committed_file
from facelake.lake.catalog import query
from facelake.lake.storage import Storage
from facelake.settings import load_settings
from resources.clip import ClipResource
from synthetic.celebahq_photos import write_two_people_source
from synthetic.clip import TINY_NAME, register_tiny_config
from tests.cli_helpers import step_failure_text
from tests.test_laion_assets import run_part

PART = "00000"
EMBEDDINGS = "laion_face_clip_embeddings"
INDEX = "laion_face_clip_index"
NEAR = "clip_near_duplicates"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Two tiny open_clip models saved as local-dir folders: seed 0 and (another space) seed 1."""
    base = tmp_path_factory.mktemp("clip-models")
    register_tiny_config(base / "config")
    return {
        seed: save_local_dir(load_clip(ClipModelSpec(TINY_NAME, seed=seed)), base / f"seed{seed}")
        for seed in (0, 1)
    }


@pytest.fixture
def tiny_clip(tiny_models, monkeypatch) -> str:
    monkeypatch.setenv("FACELAKE_CLIP__MODEL", tiny_models[0])
    monkeypatch.setenv("FACELAKE_CLIP__BATCH_SIZE", "16")
    monkeypatch.setenv("FACELAKE_CLIP__PROBE_K", "4")
    return tiny_models[0]


def materialize(defs: Definitions, instance, *keys: str | AssetCheckKey, partition=None, ok=True):
    """``dagster.materialize`` of assets (and checks) of ``defs`` by key, with its resources."""
    selection = AssetSelection.assets(*[AssetKey(k) for k in keys if isinstance(k, str)])
    checks = [k for k in keys if isinstance(k, AssetCheckKey)]
    if checks:
        selection = AssetSelection.checks(*checks) | selection
    result = dagster.materialize(
        [*defs.assets, *defs.asset_checks],
        resources=defs.resources,
        instance=instance,
        partition_key=partition,
        selection=selection,
        raise_on_error=False,
    )
    if ok:
        assert result.success, step_failure_text(result)
    return result


def metadata(instance, key: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(key))
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def test_settings_section_resource_and_tags():
    assert (
        clip_settings.PRECISIONS == clip_encoder.PRECISIONS
        and clip_settings.LOCAL_DIR == clip_model.LOCAL_DIR
    )
    assert set(ClipResource.model_fields) == set(ClipSettings.model_fields)
    settings = ClipSettings(model="local-dir:/x")
    assert settings.pretrained is None, "a local-dir holds its own weights"
    assert ClipSettings(pretrained="random").spec().pretrained is None
    with pytest.raises(ValueError, match="holds its own weights"):
        ClipSettings(model="local-dir:/x", pretrained="openai")
    with pytest.raises(ValueError, match="precision"):
        ClipSettings(precision="fp8")
    defs = build_definitions(load_settings())
    for name, queue in (
        (EMBEDDINGS, "gpu"),
        ("celebahq_clip_embeddings", "gpu"),
        (INDEX, "cpu"),
        (NEAR, "gpu"),
    ):
        op = defs.resolve_assets_def(name).node_def
        assert op.tags["dagster-celery/queue"] == queue, name
        assert (op.pool == "gpu") == (queue == "gpu"), name
    [check] = [c for c in defs.asset_checks if c.check_key.name == NO_KEPT_PAIR_CHECK]
    assert check.node_def.tags["dagster-celery/queue"] == "gpu"
    assert next(iter(check.check_specs)).blocking


def _layout_loads_with_numpy_and_pyarrow(storage: Storage, manifest) -> tuple[np.ndarray, pa.Table]:
    artifact = clip_artifact(storage, EMBEDDINGS, PART)
    paths = sorted(f.path for f in manifest.files)
    npys = [p for p in paths if p.startswith("img_emb/")]
    metas = [p for p in paths if p.startswith("metadata/")]
    assert npys == [f"img_emb/img_emb_{i:05d}.npy" for i in range(4)]
    assert metas == [f"metadata/metadata_{i:05d}.parquet" for i in range(4)]
    arrays = [np.load(io.BytesIO(storage.read_bytes(artifact.uri(p))), allow_pickle=False) for p in npys]
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(artifact.uri(p)))) for p in metas]
    vectors = np.concatenate(arrays)
    assert vectors.dtype == np.float16 and vectors.shape[1] == 32
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float64), axis=1), 1.0, atol=2e-3)
    return vectors, pa.concat_tables(tables)


@pytest.mark.parametrize("world_fixture", ["laion_world", "s3_laion_world"])
def test_embeddings_and_index_of_a_part(world_fixture, request, tiny_clip):
    world = request.getfixturevalue(world_fixture)
    instance = DagsterInstance.ephemeral()
    storage, _ = run_part(instance)
    defs = build_definitions(load_settings())
    result = materialize(defs, instance, EMBEDDINGS, INDEX, partition=PART)

    successes = world.ids_of("face", "slow")
    meta = metadata(instance, EMBEDDINGS)
    assert meta["images"] == len(successes) == meta["rows"] and meta["failed_images"] == 0
    assert meta["random_init"] is True and "RANDOM WEIGHTS" in meta["warning"]
    assert meta["space"].startswith("open_clip:custom (32-d") and meta["images_per_second"] > 0
    assert meta["shards_done_now"] == 4 and meta["dimension"] == 32
    manifest = clip_artifact(storage, EMBEDDINGS, PART).require_manifest()
    vectors, table = _layout_loads_with_numpy_and_pyarrow(storage, manifest)
    assert len(vectors) == table.num_rows == len(successes)
    assert set(table.column("SAMPLE_ID").to_pylist()) == successes
    assert table.column("caption").null_count == 0 and table.column("url").null_count == 0
    assert set(table.column("embedder_random_init").to_pylist()) == {True}

    progress = [
        record.user_message
        for record in instance.all_logs(result.run_id)
        if record.user_message.startswith(f"clip {EMBEDDINGS}[{PART}]: ")
    ]
    assert progress and f"{len(successes)}/{len(successes)} images (100.0%)" in progress[-1]
    assert all("images/s, ETA" in line for line in progress)

    index = metadata(instance, INDEX)
    assert index["method"] == "exact" and index["index_needed"] is False
    assert "no index needed" in index["reason"] and "RANDOM WEIGHTS" in index["warning"]
    assert index["probe_sheets"].count("data:image/png;base64,") == 3, "one sheet per probe prompt"
    assert "RANDOM WEIGHTS" in index["probe_sheets"]

    with open_catalog(storage) as conn:
        rows = query(conn, "SELECT asset, part, count(*) AS n FROM clip_embeddings_metadata GROUP BY ALL")
        assert rows.to_pylist() == [{"asset": EMBEDDINGS, "part": PART, "n": len(successes)}]
        [space] = query(conn, "SELECT * FROM clip_spaces").to_pylist()
        assert space["embedder_random_init"] is True and space["images"] == len(successes)
        [summary] = query(conn, "SELECT asset, part, method, rows FROM clip_index").to_pylist()
        assert summary == {"asset": INDEX, "part": PART, "method": "exact", "rows": len(successes)}
        hits = query(conn, "SELECT query, rank, image_path FROM clip_index_probe_hits ORDER BY query, rank")
        assert hits.num_rows == 3 * 4 and set(hits.column("image_path").to_pylist()) <= set(
            table.column("image_path").to_pylist()
        )

    if storage.protocol != "file":
        return
    # the state a kill leaves after three of four shards: no partition manifest, one shard uncommitted
    artifact = clip_artifact(storage, EMBEDDINGS, PART)
    artifact.uncommit()
    storage.rm(artifact.uri("shards/00003.done.json"), recursive=False)
    materialize(defs, instance, EMBEDDINGS, partition=PART)
    resumed = metadata(instance, EMBEDDINGS)
    assert resumed["shards_reused"] == 3 and resumed["shards_done_now"] == 1
    again = read_partition(artifact)
    np.testing.assert_array_equal(again.vectors, vectors)


def _threshold_with_some_pairs(storage: Storage) -> float:
    """A threshold between the 99th and 99.9th percentile of the tiny random model's pair similarities
    (nearly every pair of its embeddings is above 0.92): some groups, most images kept."""
    sets = [
        read_partition(clip_artifact(storage, a, p))
        for a, p in ((EMBEDDINGS, PART), ("celebahq_clip_embeddings", "all"))
    ]
    vectors = combine(sets).vectors.astype(np.float64)
    similarity = (vectors @ vectors.T)[np.triu_indices(len(vectors), 1)]
    return round(float(np.quantile(similarity, 0.997)), 4)


def test_celebahq_index_above_threshold_near_duplicates_and_their_check(
    laion_world, tiny_clip, tiny_models, monkeypatch
):
    instance = DagsterInstance.ephemeral()
    storage, _ = run_part(instance)
    settings = load_settings()
    write_two_people_source(storage, settings.source_uri(settings.clustering.celebahq_uri))
    monkeypatch.setenv("FACELAKE_CLIP__EXACT_SEARCH_MAX_ROWS", "60")
    monkeypatch.setenv("FACELAKE_CLIP__ANN_PROBE_QUERIES", "100")
    defs = build_definitions(load_settings())
    materialize(defs, instance, "celebahq_images", "celebahq_clip_embeddings")
    materialize(defs, instance, EMBEDDINGS, INDEX, partition=PART)

    celebahq = metadata(instance, "celebahq_clip_embeddings")
    names = read_partition(clip_artifact(storage, "celebahq_clip_embeddings")).keys
    assert celebahq["images"] == len(names) == 17 and all(name.endswith(".jpg") for name in names)
    assert celebahq["random_init"] is True

    index = metadata(instance, INDEX)
    assert index["method"] == "faiss" and index["index_needed"] is True
    assert index["nprobe"] >= 1 and 0.0 <= index["recall_at_10"] <= 1.0 and index["nlist"] >= 1
    assert index["ann"]["probe_queries"] == 100 and "recall_curve" in index["ann"]
    artifact = clip_artifact(storage, INDEX, PART)
    built = faiss.deserialize_index(
        np.frombuffer(storage.read_bytes(committed_file(artifact, "/image.index")), np.uint8)
    )
    assert built.ntotal == index["rows"]

    from facelake.cli.search import search

    found = search(load_settings(), EMBEDDINGS, PART, ["a smiling old man with a beard"], k=5)
    assert found.method == "ann" and found.hits.num_rows == 5 and found.random_init

    threshold = _threshold_with_some_pairs(storage)
    monkeypatch.setenv("FACELAKE_CLIP__NEAR_DUPLICATE_THRESHOLD", str(threshold))
    defs = build_definitions(load_settings())
    check = AssetCheckKey(AssetKey(NEAR), NO_KEPT_PAIR_CHECK)
    result = materialize(defs, instance, NEAR)
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed, evaluation.metadata
    near = metadata(instance, NEAR)
    assert (
        near["threshold"] == threshold and near["random_init"] is True and "RANDOM WEIGHTS" in near["warning"]
    )
    assert near["sources"] == [f"{EMBEDDINGS}:{PART}", "celebahq_clip_embeddings:all"]
    assert near["images"] == 142 + 17 and near["pairs"] > 0 and 0 < near["groups"] <= near["pairs"]
    assert near["kept"] == near["images"] - near["removed"] == near["rows"]

    with open_catalog(storage) as conn:
        kept = query(conn, "SELECT source_asset, count(*) AS n FROM clip_near_duplicates_keep GROUP BY ALL")
        assert sum(kept.column("n").to_pylist()) == near["kept"]
        assert set(kept.column("source_asset").to_pylist()) <= {EMBEDDINGS, "celebahq_clip_embeddings"}
        groups = query(conn, "SELECT * FROM clip_near_duplicates_groups")
        assert groups.num_rows == near["images_in_groups"]
        pairs = query(conn, "SELECT min(similarity) AS low FROM clip_near_duplicates_pairs").to_pylist()
        assert pairs[0]["low"] > threshold

    # plant a removed near-duplicate back into the committed keep-list: the check recomputes and fails
    near_artifact = clip_artifact(storage, NEAR)
    keep_uri = committed_file(near_artifact, f"/{KEEP_FILE}")
    keep = pq.read_table(io.BytesIO(storage.read_bytes(keep_uri)))
    removed = groups.filter(pc.invert(groups.column("kept"))).slice(0, 1)
    planted = removed.select(keep.column_names).cast(keep.schema)
    with storage.open(keep_uri, "wb") as handle:
        pq.write_table(pa.concat_tables([keep, planted]), handle)
    result = materialize(defs, instance, check, ok=False)
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    values = {k: v.value for k, v in evaluation.metadata.items()}
    assert values["pairs_above_threshold"] >= 1 and values["max_kept_pair_similarity"] > threshold

    # another model is another space: de-duplicating it together with the first is refused, naming both
    monkeypatch.setenv("FACELAKE_CLIP__MODEL", tiny_models[1])
    defs = build_definitions(load_settings())
    materialize(defs, instance, "celebahq_clip_embeddings")
    failed = materialize(defs, instance, NEAR, ok=False)
    assert not failed.success
    message = step_failure_text(failed)
    first = read_partition(clip_artifact(storage, EMBEDDINGS, PART)).space["embedder_weights_sha256"]
    second = read_partition(clip_artifact(storage, "celebahq_clip_embeddings")).space[
        "embedder_weights_sha256"
    ]
    assert first != second and first[:12] in message and second[:12] in message, message
