"""Identity clusters as Dagster assets: the CelebA-HQ chain end to end (in-process and through the CLI) on
offline photos of two people, the factory on a partitioned embedding asset against scikit-learn, and bad input.

The CelebA-HQ source is synthetic.celebahq_photos (the demo's too): eight augmented copies each of
skimage's astronaut and matplotlib's grace_hopper.jpg, and one image without a face, in the jxie/celeba-hq
parquet layout. Embeddings come from the model registry's defaults (RetinaFace mobilenet0.25 + dlib,
offline), and eps from the dlib profile (facelake.faces.identity_dlib), as the settings default to.
"""

# No "from __future__ import annotations": the toy asset below is read by Dagster at runtime.

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import (
    AssetExecutionContext,
    AssetKey,
    DagsterInstance,
    MaterializeResult,
    StaticPartitionsDefinition,
    asset,
)
from sklearn.cluster import DBSCAN

import dagster_project  # noqa: F401  (first: the code location imports the asset modules, avoiding a cycle)
from assets.clusters import CENTROID_CHECK, identity_clusters_asset
from assets.materializing import materialize_result
from facelake.celebahq import dataset as celebahq
from facelake.clusters.settings import ClusteringSettings
from facelake.faces.identity import EmbedderProfile, embedding_table, table_space
from facelake.faces.identity_dlib import SAME_IDENTITY_COSINE_DISTANCE as DLIB_EPS
from facelake.laion.artifacts import committed_file
from facelake.lake.commit import PartitionArtifact, Written, materialize_partition
from facelake.lake.storage import Storage
from facelake.settings import load_settings
from resources import StorageResource
from synthetic.celebahq_photos import NO_FACE, PEOPLE, CelebaSource, write_two_people_source
from tests.cli_helpers import (
    IN_PROCESS,
    cli_env,
    make_dagster_home,
    materialization_records,
    materialize,
    materialize_in_process,
    metadata_values,
    step_failure_text,
    world_definitions,
)

CHAIN = ["celebahq_images", "celebahq_face_embeddings", "celebahq_identity_clusters"]
CARD_COLUMNS = ["image", "file_name", "cluster_id", "cluster_size"]


@dataclass
class CelebaWorld:
    base: Path
    config: Path
    source: CelebaSource
    models: Path

    def lake(self) -> Storage:
        return load_settings().storage()


def write_world_config(base: Path, models: Path, **clustering: object) -> Path:
    config = {
        "root": str(base / "lake"),
        "sources": str(base / "sources"),
        "models": {"cache_dir": str(models), "torch_threads": 1},
        "clustering": dict(clustering),
    }
    path = base / "facelake.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def make_world(base: Path, models: Path, **clustering: object) -> CelebaWorld:
    base.mkdir(parents=True, exist_ok=True)
    source = write_two_people_source(Storage(str(base / "lake")), str(base / "sources" / "celeba-hq"))
    return CelebaWorld(base, write_world_config(base, models, **clustering), source, models)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, models_dir) -> Iterator[tuple[CelebaWorld, DagsterInstance, object]]:
    """The CelebA-HQ chain materialized once in-process with the code location's resources."""
    world = make_world(tmp_path_factory.mktemp("celeba"), models_dir)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("FACELAKE_ROOT", raising=False)
        env.setenv("FACELAKE_CONFIG", str(world.config))
        instance = DagsterInstance.ephemeral()
        result = materialize_in_process(world_definitions(), CHAIN, instance)
        yield world, instance, result


def clusters_output(lake: Storage) -> tuple[pa.Table, list[str]]:
    artifact = celebahq.clusters_artifact(lake)
    uris = [u for u in artifact.file_uris(suffix=".parquet") if "/data/" in u]
    tables = []
    for uri in uris:
        with lake.open(uri) as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables), uris


def committed(artifact: PartitionArtifact, name: str) -> str:
    """The committed file ``name`` of an artifact (files live under the attempt that wrote them)."""
    return committed_file(artifact, f"/{name}")


def latest(instance: DagsterInstance, asset_name: str) -> dict:
    records = materialization_records(instance, asset_name)
    assert records, f"{asset_name} was not materialized"
    return metadata_values(records[0].asset_materialization)


def assert_two_people_clustered(world: CelebaWorld, table: pa.Table) -> None:
    """Copies of one person share a cluster, the two people never do; the faceless image is not there."""
    assert table.column_names == CARD_COLUMNS
    person = world.source.person
    rows = table.select(["file_name", "cluster_id", "cluster_size"]).to_pylist()
    assert {r["file_name"] for r in rows} == {name for name, who in person.items() if who is not None}
    ids = {who: {r["cluster_id"] for r in rows if person[r["file_name"]] == who} for who in PEOPLE}
    assert all(len(cluster) == 1 for cluster in ids.values()), f"one person split over clusters: {ids}"
    assert ids[PEOPLE[0]].isdisjoint(ids[PEOPLE[1]]), "two people share a cluster"
    copies = sum(1 for who in person.values() if who == PEOPLE[0])
    assert {r["cluster_size"] for r in rows} == {copies}


def test_chain_materializes_the_cards_layout(chain_run):
    world, _, result = chain_run
    assert result.success, step_failure_text(result)
    lake = world.lake()
    table, uris = clusters_output(lake)
    assert [Path(u).name for u in uris] == [
        "data-train-00000-of-00002.parquet",
        "data-train-00001-of-00002.parquet",
    ]
    assert_two_people_clustered(world, table)
    with lake.open(uris[0]) as handle:
        assert pq.read_schema(handle) == celebahq.CLUSTERS_SCHEMA
    source_bytes = {}
    for uri in world.source.files:
        for row in pq.read_table(uri)["image"].to_pylist():
            source_bytes[row["path"]] = row["bytes"]
    assert all(row["bytes"] == source_bytes[row["path"]] for row in table["image"].to_pylist()), (
        "bytes unchanged"
    )


def test_embeddings_centroids_and_no_face_are_committed(chain_run):
    world, _, _ = chain_run
    lake = world.lake()
    artifact = celebahq.clusters_artifact(lake)
    listed = {f.path.rsplit("/", 1)[-1] for f in artifact.require_manifest().files}
    expected = {
        "assignments.parquet",
        "centroids.parquet",
        "nn_similarity.png",
        "embeddings.parquet",
        "no_face.parquet",
    }
    assert expected <= listed
    read = {name: pq.read_table(committed(artifact, name)) for name in expected if name.endswith(".parquet")}
    embeddings, centroids = read["embeddings.parquet"], read["centroids.parquet"]
    assert table_space(embeddings)["embedder_name"] == "dlib_resnet_v1"
    assert table_space(centroids) == table_space(embeddings), "centroids stay in the embedder's space"
    assert centroids["cluster_size"].to_pylist() == [8, 8] and centroids["cluster_id"].to_pylist() == [0, 1]
    vectors = np.asarray(centroids["embedding"].to_pylist())
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert read["no_face.parquet"]["file_name"].to_pylist() == [NO_FACE]
    assignments = read["assignments.parquet"]
    assert assignments["cluster_id"].to_pylist() == embeddings["cluster_id"].to_pylist()
    assert min(assignments["centroid_cosine"].to_pylist()) > 1 - DLIB_EPS
    assert Path(committed(artifact, "nn_similarity.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metadata_records_eps_from_the_dlib_profile_and_the_analysis(chain_run):
    _, instance, result = chain_run
    meta = latest(instance, "celebahq_identity_clusters")
    assert (
        meta["eps"] == DLIB_EPS and meta["eps_source"] == "profile" and meta["eps_used_source"] == "profile"
    )
    assert "dlib_resnet_v1" in meta["eps_detail"]
    assert meta["identities"] == 2 and meta["dbscan_clusters"] == 2 and meta["singletons"] == 0
    assert meta["identity_size_distribution"] == {"8": 2} and meta["min_samples"] == 2
    assert meta["nn_points"] == 16 and meta["nn_bimodal"] is False, "every NN is a copy of the same person"
    assert meta["dbscan_stats"]["screen"] in ("numpy-float32", "torch-float32", "torch-bfloat16")
    assert meta["dbscan_stats"]["pairs_screened"] == 16 * 15 // 2
    assert meta["random_init"] is False and "trained weights" in meta["embedder"]
    assert meta["nn_similarity_plot"].startswith(
        "![nearest-neighbour cosine similarity](data:image/png;base64,"
    )
    embedded = latest(instance, "celebahq_face_embeddings")
    assert (
        embedded["images"] == 17 and embedded["faces_embedded"] == 16 and embedded["images_without_face"] == 1
    )
    assert embedded["faces_per_image_histogram"]["0"] == 1
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == CENTROID_CHECK and check.passed
    assert (
        check.metadata["identities_checked"].value == 2 and check.metadata["members_below_bound"].value == 0
    )


def test_clustering_and_embedding_assets_carry_the_gpu_pool_and_tags(chain_run):
    defs = world_definitions()
    for name in ("celebahq_face_embeddings", "celebahq_identity_clusters", "laion_face_identity_clusters"):
        op = defs.resolve_assets_def(name).node_def
        assert op.pool == "gpu" and op.tags["dagster-celery/queue"] == "gpu"
        assert "nvidia.com/gpu" in str(op.tags["dagster-k8s/config"])
    assert defs.resolve_assets_def("celebahq_images").node_def.tags["dagster-celery/queue"] == "cpu"


def test_a_rerun_with_the_same_config_does_nothing(chain_run):
    world, instance, _ = chain_run
    lake = world.lake()
    before = {
        name: a(lake).require_manifest()
        for name, a in (
            ("images", celebahq.images_artifact),
            ("embeddings", celebahq.embeddings_artifact),
            ("clusters", celebahq.clusters_artifact),
        )
    }
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FACELAKE_CONFIG", str(world.config))
        assert materialize_in_process(world_definitions(), CHAIN, instance).success
    for name, artifact_of in (
        ("images", celebahq.images_artifact),
        ("embeddings", celebahq.embeddings_artifact),
        ("clusters", celebahq.clusters_artifact),
    ):
        assert artifact_of(lake).require_manifest().created_at == before[name].created_at
    for asset_name in CHAIN:
        assert latest(instance, asset_name)["reused_committed_partition"] is True
    meta = latest(instance, "celebahq_identity_clusters")
    assert meta["identities"] == 2, "metadata comes back from the manifest on a no-op rerun"


def test_eps_fixed_or_from_the_valley_is_recorded(chain_run):
    world, instance, _ = chain_run
    with pytest.MonkeyPatch.context() as env:
        # a loose eps merges the two people; a tight centroid bound (copies sit at cosine > 0.99 of their own
        # centroid, the merged pair at ~0.97) makes the check catch it
        fixed = write_world_config(
            world.base, world.models, eps_source="fixed", eps=0.5, min_centroid_cosine=0.985
        )
        env.setenv("FACELAKE_CONFIG", str(fixed))
        result = materialize_in_process(world_definitions(), ["celebahq_identity_clusters"], instance)
        assert result.success
        meta = latest(instance, "celebahq_identity_clusters")
        assert (
            meta["eps"] == 0.5
            and meta["eps_used_source"] == "fixed"
            and meta["reused_committed_partition"] is False
        )
        assert meta["identities"] == 1, "at eps 0.5 the two people (cosine ~0.9) are one cluster: eps matters"
        [check] = result.get_asset_check_evaluations()
        assert check.passed is False, "members far from the merged centroid are flagged"
        assert check.metadata["identities_below_bound"].value == 1 and check.metadata["bound"].value == 0.985
        env.setenv("FACELAKE_CONFIG", str(write_world_config(world.base, world.models, eps_source="valley")))
        assert materialize_in_process(world_definitions(), ["celebahq_identity_clusters"], instance).success
        meta = latest(instance, "celebahq_identity_clusters")
        assert (
            meta["eps_source"] == "valley"
            and meta["eps_used_source"] == "profile"
            and meta["eps"] == DLIB_EPS
        )
        assert "no valley" in meta["eps_detail"]
        assert meta["identities"] == 2
        env.setenv("FACELAKE_CONFIG", str(world.config))  # leave the defaults committed for the other tests
        assert materialize_in_process(world_definitions(), ["celebahq_identity_clusters"], instance).success


def test_the_cli_materializes_the_chain(tmp_path, models_dir, monkeypatch):
    world = make_world(tmp_path / "cli", models_dir)
    monkeypatch.delenv("FACELAKE_ROOT", raising=False)
    monkeypatch.setenv("FACELAKE_CONFIG", str(world.config))
    home = make_dagster_home(tmp_path / "dagster_home")
    materialize(CHAIN, cli_env(home, **IN_PROCESS))
    table, _ = clusters_output(world.lake())
    assert_two_people_clustered(world, table)
    with DagsterInstance.from_config(str(home)) as instance:
        meta = latest(instance, "celebahq_identity_clusters")
        assert meta["identities"] == 2 and meta["eps"] == DLIB_EPS and meta["eps_used_source"] == "profile"
        record = instance.get_latest_asset_check_evaluation_record(
            dagster.AssetCheckKey(AssetKey("celebahq_identity_clusters"), CENTROID_CHECK)
        )
        assert record is not None and record.event.dagster_event.event_specific_data.passed is True


# --- bad input: a clear error naming the file and column, nothing committed ----------------------------------


@pytest.fixture
def bad_world(tmp_path, models_dir, monkeypatch) -> CelebaWorld:
    world = make_world(tmp_path, models_dir)
    monkeypatch.delenv("FACELAKE_ROOT", raising=False)
    monkeypatch.setenv("FACELAKE_CONFIG", str(world.config))
    return world


def test_a_source_file_without_the_image_column_fails_naming_it(bad_world):
    bad = bad_world.source.folder + "/data/train-00002-of-00002.parquet"
    pq.write_table(pa.table({"picture": [b"x"], "label": [0]}), bad)
    result = materialize_in_process(world_definitions(), CHAIN[:1], raise_on_error=False)
    assert not result.success
    text = step_failure_text(result)
    assert bad in text and "missing column 'image'" in text
    assert celebahq.images_artifact(bad_world.lake()).manifest() is None


def test_undecodable_image_bytes_fail_the_embedding_naming_file_and_row(bad_world):
    uri = bad_world.source.files[1]
    table = pq.read_table(uri)
    images = table["image"].to_pylist()
    images[2] = {"bytes": b"\xff\xd8\xff garbage", "path": images[2]["path"]}
    pq.write_table(table.set_column(0, "image", pa.array(images, celebahq.IMAGE_TYPE)), uri)
    defs = world_definitions()
    assert materialize_in_process(defs, CHAIN[:1]).success
    result = materialize_in_process(defs, CHAIN[1:2], raise_on_error=False)
    assert not result.success
    text = step_failure_text(result)
    assert uri in text and f"column 'image.bytes' row 2 ('{images[2]['path']}')" in text
    assert "undecodable image bytes" in text
    assert celebahq.embeddings_artifact(bad_world.lake()).manifest() is None


# --- the factory on any (partitioned) embedding asset ------------------------------------------------------------

PARTS = StaticPartitionsDefinition(["a", "b"])
SPACE = EmbedderProfile("toy", 32, "1" * 64, True, 0.3, note="random test space")
OTHER_SPACE = EmbedderProfile("other", 32, "2" * 64, True, 0.3)


def toy_artifact(lake: Storage, part: str) -> PartitionArtifact:
    return PartitionArtifact(lake, "toy", "embeddings", part)


def toy_clusters_artifact(lake: Storage, part: str) -> PartitionArtifact:
    return PartitionArtifact(lake, "toy", "identity_clusters", part)


def synthetic_identities(seed: int, centres: int = 60) -> np.ndarray:
    """Unit vectors: identities of 1-6 samples (intra cosine ~0.85), centres nearly orthogonal, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for centre in rng.normal(size=(centres, SPACE.dimension)):
        centre /= np.linalg.norm(centre)
        for _ in range(rng.integers(1, 7)):
            rows.append(centre + rng.normal(size=SPACE.dimension) * 0.07)
    rows.extend(rng.normal(size=(10, SPACE.dimension)))
    vectors = np.asarray(rows)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def toy_embeddings_asset(mixed: bool = False):
    @asset(name="toy_embeddings", partitions_def=PARTS)
    def toy_embeddings(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
        lake, part = storage.get(), context.partition_key
        vectors = synthetic_identities(seed=ord(part))
        half = len(vectors) // 2

        def write(attempt):
            entries = []
            for i, (rows, profile) in enumerate(
                ((slice(0, half), SPACE), (slice(half, None), OTHER_SPACE if mixed else SPACE))
            ):
                ids = {"sample_id": pa.array(np.arange(len(vectors))[rows], pa.int64())}
                uri = attempt.uri(f"shards/{i:05d}.parquet")
                with lake.open(uri, "wb") as sink:
                    pq.write_table(embedding_table(vectors[rows], profile, ids), sink)
                entries.append(attempt.entry(uri, rows=len(vectors[rows])))
            return Written(entries, rows=len(vectors))

        artifact = toy_artifact(lake, part)
        outcome = materialize_partition(artifact, {"mixed": mixed}, "1", "test", write)
        return materialize_result(context, artifact, outcome)

    return toy_embeddings


def toy_clusters(**settings: object):
    return identity_clusters_asset(
        name="toy_identity_clusters",
        embeddings="toy_embeddings",
        embeddings_artifact=toy_artifact,
        out_artifact=toy_clusters_artifact,
        settings=ClusteringSettings(**settings),
        group="toy",
        partitions_def=PARTS,
    )


def test_factory_on_a_partitioned_embedding_asset_matches_sklearn(tmp_path):
    lake = Storage(str(tmp_path / "lake"))
    instance = DagsterInstance.ephemeral()
    result = dagster.materialize(
        [toy_embeddings_asset(), toy_clusters(eps_source="valley")],
        resources={"storage": StorageResource(root=lake.root)},
        partition_key="b",
        instance=instance,
    )
    assert result.success
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    for scan in ("nearest-neighbour scan", "DBSCAN scan"):  # the engine's progress, in the run log
        assert any(re.match(rf"{scan}: ([\d,]+)/\1 pairs \(100\.0%\)", m) for m in messages), scan
    assert toy_clusters_artifact(lake, "a").manifest() is None, "only the requested partition"
    artifact = toy_clusters_artifact(lake, "b")
    assignments = pq.read_table(committed(artifact, "assignments.parquet"))
    vectors = synthetic_identities(seed=ord("b"))
    [event] = result.asset_materializations_for_node("toy_identity_clusters")
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["eps_used_source"] == "valley" and meta["nn_bimodal"] is True
    assert 0.3 < 1 - meta["eps"] < 0.8, "the valley lies between the intra (~0.85) and inter (~0) modes"
    expected = DBSCAN(eps=meta["eps"], min_samples=2, metric="cosine").fit(vectors.astype(np.float64)).labels_
    assert assignments["dbscan_label"].to_pylist() == expected.tolist()
    assert assignments["sample_id"].to_pylist() == list(range(len(vectors)))
    noise = expected < 0
    assert meta["singletons"] == int(noise.sum()) and meta["dbscan_clusters"] == expected.max() + 1
    ids = np.asarray(assignments["cluster_id"].to_pylist())
    assert (ids[~noise] == expected[~noise]).all() and sorted(ids[noise]) == list(
        range(expected.max() + 1, ids.max() + 1)
    )
    sizes = np.bincount(ids)[ids]
    assert assignments["cluster_size"].to_pylist() == sizes.tolist()
    centroids = pq.read_table(committed(artifact, "centroids.parquet"))
    assert centroids.num_rows == ids.max() + 1 and table_space(centroids)["embedder_random_init"] is True
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.partition == "b"


def test_embeddings_from_two_spaces_are_refused_naming_the_file(tmp_path):
    lake = Storage(str(tmp_path / "lake"))
    result = dagster.materialize(
        [toy_embeddings_asset(mixed=True), toy_clusters()],
        resources={"storage": StorageResource(root=lake.root)},
        partition_key="a",
        raise_on_error=False,
    )
    assert not result.success
    text = step_failure_text(result)
    assert re.search(
        rf"{re.escape(toy_artifact(lake, 'a').prefix)}/\S*shards/00001\.parquet: columns embedder_", text
    )
    assert "embedding space differs" in text and "refusing to mix embedding spaces" in text
    assert toy_clusters_artifact(lake, "a").manifest() is None
