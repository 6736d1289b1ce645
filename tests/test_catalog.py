"""The DuckDB catalog over committed LAION-Face artifacts: one materialized part per storage (local and S3)."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, TableMetadataValue

from facelake import catalog
from facelake.catalog import describe, open_catalog, query, refresh, run_report
from facelake.celebahq import dataset as celebahq
from facelake.clusters.identity_clusters import (
    assignments_table,
    centroids_table,
    cluster_identities,
    write_parquet,
)
from facelake.faces.detection_table import detections_table
from facelake.faces.identity import EmbedderProfile, embedding_table
from facelake.faces.primary import face_columns
from facelake.hyperface import references as hyperface
from facelake.hyperface.references import assemble_gallery
from facelake.laion import artifacts
from facelake.lake.commit import PartitionArtifact, Written, materialize_partition
from facelake.lake.errors import InputError
from facelake.lake.storage import S3Options, Storage
from resources.catalog import CatalogResource, table_metadata
from synthetic.identities import synthetic_identities
from synthetic.image_server import ImageServer
from synthetic.world import LaionWorld, WorldSpec, build_laion_world, write_config
from tests.conftest import S3_KEY, S3_SECRET
from tests.test_laion_assets import EXPECTED_STATUS, run_part

VIEWS = ("laion_face_meta", "laion_face_samples", "laion_face_download", "laion_face_detections")
REPORT_COLUMNS = [
    "part",
    "meta_rows",
    "samples",
    "success",
    "failed_to_download",
    "failed_to_resize",
    "opted_out",
    "success_rate",
    "tar_bytes",
    "released_faces",
    "faces_on_downloaded",
    "mean_faces_per_downloaded",
]


@dataclass
class Lake:
    world: LaionWorld
    storage: Storage


@pytest.fixture(scope="module", params=["local", "s3"])
def lake(request, tmp_path_factory) -> Lake:
    """Part 00000 materialized ONCE per storage for the whole module, on the offline world."""
    return materialized_part(request, tmp_path_factory)


def materialized_part(request, tmp_path_factory) -> Lake:
    """Part 00000 of the offline world materialized on local disk or S3 (``request.param``)."""
    base = tmp_path_factory.mktemp(f"catalog_{request.param}")
    with ImageServer() as server, pytest.MonkeyPatch.context() as patch:
        world = build_laion_world(base / "world", server)
        if request.param == "s3":
            endpoint = request.getfixturevalue("s3_endpoint")
            bucket = f"catalog-{uuid.uuid4().hex[:10]}"
            Storage(f"s3://{bucket}", S3Options(endpoint, S3_KEY, S3_SECRET)).fs.mkdir(bucket)
            s3 = {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET}
            write_config(world, WorldSpec(), root=f"s3://{bucket}/root", s3=s3)
        patch.delenv("FACELAKE_ROOT", raising=False)
        patch.setenv("FACELAKE_CONFIG", str(world.config_path))
        storage, _ = run_part(DagsterInstance.ephemeral())
    return Lake(world, storage)


def view_counts(conn) -> dict[str, int]:
    return {row["name"]: row["rows"] for row in describe(conn).to_pylist()}


def manifest_rows(storage: Storage) -> dict[str, int]:
    """Rows each view should hold, from the committed manifests alone."""
    images = artifacts.images(storage, "00000").require_manifest()
    shard_rows = [
        f.rows for f in images.files if f.path.startswith("shards/") and f.path.endswith(".parquet")
    ]
    return {
        "laion_face_meta": artifacts.meta(storage, "00000").require_manifest().rows,
        "laion_face_samples": images.rows,
        "laion_face_download": sum(shard_rows),
        "laion_face_detections": artifacts.detections(storage, "00000").require_manifest().rows,
    }


def single_column(conn, sql: str) -> list:
    table = query(conn, sql)
    return table.column(0).to_pylist()


def test_views_hold_exactly_the_committed_rows(lake):
    storage, world = lake.storage, lake.world
    expected = manifest_rows(storage)
    with open_catalog(storage) as conn:
        counts = view_counts(conn)
        assert {view: counts[view] for view in VIEWS} == expected
        assert expected["laion_face_meta"] == len(world.face_ids)
        for view in VIEWS:
            assert single_column(conn, f"SELECT DISTINCT part FROM {view}") == ["00000"]
        samples = query(conn, "SELECT sample_id, status FROM laion_face_samples").to_pylist()
        assert {r["sample_id"]: r["status"] for r in samples} == {
            sid: EXPECTED_STATUS[kind] for sid, kind in world.kinds.items()
        }
        shards = single_column(conn, "SELECT DISTINCT shard_id FROM laion_face_download ORDER BY 1")
        assert shards == list(range(len(shards))) and len(shards) == 4  # 155 samples, 50 per shard
        partitions = query(conn, "SELECT artifact, part, rows FROM laion_face_partitions").to_pylist()
        assert {(p["artifact"], p["part"]) for p in partitions} == {
            ("face_ids", "all"),
            ("optout", "all"),
            ("meta", "00000"),
            ("images", "00000"),
            ("detections", "00000"),
        }


def test_report_counts_equal_the_samples_view(lake):
    storage, world = lake.storage, lake.world
    with open_catalog(storage) as conn:
        report = run_report(conn)
        by_status = query(conn, "SELECT status, count(*) AS n FROM laion_face_samples GROUP BY status")
    assert report.column_names == REPORT_COLUMNS
    [row] = report.to_pylist()
    counted = {r["status"]: r["n"] for r in by_status.to_pylist()}
    assert counted == dict(Counter(EXPECTED_STATUS[kind] for kind in world.kinds.values()))
    assert {status: row[status] for status in counted} == counted
    assert row["samples"] == sum(counted.values()) == len(world.kinds)
    assert row["success_rate"] == pytest.approx(row["success"] / (row["samples"] - row["opted_out"]))
    images = artifacts.images(storage, "00000").require_manifest()
    assert row["success_rate"] == pytest.approx(images.extra["success_rate"])
    assert row["tar_bytes"] == images.extra["tar_bytes"] > 0
    assert row["meta_rows"] == len(world.face_ids)
    assert row["released_faces"] == len(world.kinds) - len(world.ids_of("blocked_id", "blocked_url"))


def test_detections_join_the_download_on_sample_id(lake):
    storage, world = lake.storage, lake.world
    detections_uri = artifacts.committed_file(artifacts.detections(storage, "00000"), ".parquet")
    with storage.open(detections_uri, "rb") as handle:
        released = pq.read_table(handle)
    downloaded = world.ids_of("face", "slow")
    expected_faces = sum(sid in downloaded for sid in released["sample_id"].to_pylist())
    with open_catalog(storage) as conn:
        [joined] = query(
            conn,
            """
            SELECT count(*) AS faces, count(DISTINCT d.sample_id) AS samples
            FROM laion_face_detections AS d
            JOIN laion_face_download AS w ON w.part = d.part AND w.SAMPLE_ID = d.sample_id
            WHERE w.status = 'success'
            """,
        ).to_pylist()
        [report] = run_report(conn).to_pylist()
        some = min(world.ids_of("face"))
        [box] = single_column(conn, f"SELECT box FROM laion_face_detections WHERE sample_id = {some}")
    assert joined == {"faces": expected_faces, "samples": len(downloaded)}
    assert report["faces_on_downloaded"] == expected_faces
    assert report["mean_faces_per_downloaded"] == pytest.approx(expected_faces / len(downloaded))
    assert box == pytest.approx(world.crops[some].box.tolist(), abs=1e-4)


def test_uncommitted_files_are_never_read(lake):
    storage = lake.storage
    expected = manifest_rows(storage)
    committed = artifacts.committed_file(artifacts.detections(storage, "00000"), ".parquet")
    images = artifacts.images(storage, "00000")
    strays = [images.uri("shards/00099.parquet"), images.uri("_attempts/crashed/samples.parquet")]
    crashed = artifacts.detections(storage, "00001").begin({}, "test")  # an attempt that never commits
    copy = crashed.uri("detections_00001.parquet")
    try:
        storage.write_bytes(copy, storage.read_bytes(committed))
        storage.write_bytes(strays[0], storage.read_bytes(images.uri("shards/00000.parquet")))
        storage.write_bytes(
            strays[1], storage.read_bytes(artifacts.committed_file(images, "samples.parquet"))
        )
        with open_catalog(storage) as conn:
            assert {view: view_counts(conn)[view] for view in VIEWS} == expected
            assert single_column(conn, "SELECT DISTINCT part FROM laion_face_detections") == ["00000"]
            assert single_column(conn, "SELECT part FROM laion_face_partitions WHERE part = '00001'") == []

            crashed.commit([crashed.entry(copy, rows=expected["laion_face_detections"])])
            refresh(conn, storage)
            parts = single_column(conn, "SELECT part FROM laion_face_detections GROUP BY part ORDER BY part")
            assert parts == ["00000", "00001"]
            assert view_counts(conn)["laion_face_detections"] == 2 * expected["laion_face_detections"]
            report = {r["part"]: r for r in run_report(conn).to_pylist()}
            assert report["00001"]["released_faces"] == expected["laion_face_detections"]
            assert report["00001"]["samples"] is None and report["00001"]["faces_on_downloaded"] is None

            artifacts.detections(storage, "00001").uncommit()  # the manifest goes: the partition is gone
            refresh(conn, storage)
            assert single_column(conn, "SELECT DISTINCT part FROM laion_face_detections") == ["00000"]
    finally:
        storage.rm(artifacts.detections(storage, "00001").prefix)
        for uri in strays:
            storage.rm(uri)


def commit_detections(storage: Storage, part: str, file_name: str, sample_ids: list[int]) -> int:
    """Commit a small detections partition through the manifest-last protocol; returns its faces."""
    n = len(sample_ids)
    table = detections_table(
        np.array(sample_ids), np.ones((n, 4)), np.ones((n, 5, 2)), np.linspace(0.5, 0.9, n)
    )
    attempt = artifacts.detections(storage, part).begin({}, "test")
    with storage.open(attempt.uri(file_name), "wb") as handle:
        pq.write_table(table, handle)
    attempt.commit([attempt.entry(attempt.uri(file_name), rows=n)])
    return n


def test_empty_lake_has_every_view_with_its_columns(any_storage):
    with open_catalog(any_storage) as conn:
        counts = view_counts(conn)
        assert {view: counts[view] for view in VIEWS} == dict.fromkeys(VIEWS, 0)
        detections = query(conn, "SELECT * FROM laion_face_detections")
        assert detections.column_names == ["sample_id", "face_index", "box", "landmarks", "score", "part"]
        assert str(detections.schema.field("box").type) == "fixed_size_list<: float>[4]"
        samples = query(conn, "SELECT * FROM laion_face_samples").column_names
        assert samples == ["sample_id", "status", "error_message", "shard_id", "key", "attempts", "part"]
        download = query(conn, "SELECT * FROM laion_face_download").column_names
        assert {"SAMPLE_ID", "key", "status", "error_message", "sha256", "part", "shard_id"} <= set(download)
        joined = query(
            conn,
            "SELECT count(*) AS n FROM laion_face_detections d "
            "JOIN laion_face_download w ON w.part = d.part AND w.SAMPLE_ID = d.sample_id",
        )
        assert joined.to_pylist() == [{"n": 0}]
        report = run_report(conn)
        assert report.column_names == REPORT_COLUMNS and report.num_rows == 0


def test_file_names_with_quotes_are_read_and_the_resource_reports(any_storage):
    faces = commit_detections(any_storage, "00007", "it's detections.parquet", [3, 3, 8])
    with CatalogResource().connect(any_storage) as conn:
        counts = query(conn, "SELECT part, count(*) AS n FROM laion_face_detections GROUP BY part")
        report = run_report(conn)
    assert counts.to_pylist() == [{"part": "00007", "n": faces}]
    [row] = report.to_pylist()
    assert row["released_faces"] == faces and row["samples"] is None
    metadata = table_metadata(report)
    assert isinstance(metadata, TableMetadataValue)
    assert [c.name for c in metadata.schema.columns] == REPORT_COLUMNS
    assert metadata.records[0].data["released_faces"] == faces


def test_a_damaged_manifest_is_named(local_storage):
    manifest = PartitionArtifact(local_storage, "laion_face", "detections", "00003").manifest_uri
    local_storage.write_bytes(manifest, b"{not json")
    with pytest.raises(InputError, match=r"detections/00003/_manifest\.json: unreadable partition manifest"):
        open_catalog(local_storage)


def test_sql_files_are_found_or_named(tmp_path, monkeypatch, local_storage):
    with pytest.raises(InputError, match=r"missing\.sql: SQL file not found .*FACELAKE_SQL_DIR"):
        catalog.sql_path("missing.sql")
    (tmp_path / catalog.REPORT_SQL).write_text("SELECT 42 AS answer")
    monkeypatch.setenv(catalog.SQL_DIR_ENV, str(tmp_path))
    with open_catalog(local_storage) as conn:
        assert run_report(conn).to_pylist() == [{"answer": 42}]


# --- the face, cluster, CelebA-HQ and HyperFace views -----------------------------------------------------

FACE_VIEWS = (
    "laion_face_detected",
    "laion_face_embeddings",
    "laion_face_identity_clusters",
    "laion_face_identity_centroids",
    "celebahq_images",
    "celebahq_face_embeddings",
    "celebahq_no_face",
    "celebahq_identity_clusters",
    "celebahq_identity_centroids",
    "hyperface_gallery",
    "hyperface_reference_embeddings",
    "hyperface_images",
)
PROFILE = EmbedderProfile("synthetic-16", 16, "0" * 64, True, 0.35)
REFERENCE_SHARD_SIZE = 4


def commit_tables(storage: Storage, where: tuple[str, str, str], tables: dict[str, pa.Table]) -> None:
    """Commit ``tables`` (file name -> table) as one partition through the manifest-last protocol."""

    def write(attempt):
        entries = []
        for name, table in tables.items():
            write_parquet(storage, attempt.uri(name), table)
            entries.append(attempt.entry(attempt.uri(name), rows=table.num_rows))
        return Written(entries, rows=sum(t.num_rows for t in tables.values()))

    materialize_partition(PartitionArtifact(storage, *where), {}, "1", "test", write)


def commit_face_tables(storage: Storage) -> dict[str, int]:
    """Tables built by the engine's own writers, committed where the face, cluster, CelebA-HQ and HyperFace
    assets commit theirs; returns the rows each view must show."""
    vectors = synthetic_identities(48, 16, samples=(2, 4), noise_fraction=0.1, seed=4).vectors
    n, space = len(vectors), PROFILE.provenance()
    rng = np.random.default_rng(0)
    boxes, scores = rng.uniform(0, 100, (n, 4)).astype(np.float32), np.linspace(0.5, 0.99, n)
    detected = detections_table(np.arange(n), boxes, rng.uniform(0, 100, (n, 5, 2)), scores)
    detected = detected.append_column("detector", pa.array(["retinaface"] * n)).append_column(
        "threshold", pa.array([0.5] * n, pa.float32())
    )
    face_ids = {
        "sample_id": pa.array(np.arange(n), pa.int64()),
        "key": pa.array([f"{i:09d}" for i in range(n)]),
        "face_index": pa.array(np.zeros(n, np.int16)),
    }
    embedded = embedding_table(vectors, PROFILE, face_ids)
    clusters = cluster_identities(vectors, space, eps_source="fixed", eps=0.35, block=16)
    laion_assignments = assignments_table(pa.table(face_ids), clusters)
    centroids = centroids_table(clusters, space)
    laion = ("laion_face", "00000")
    commit_tables(storage, (laion[0], "detected", laion[1]), {"shards/00000.parquet": detected})
    commit_tables(storage, (laion[0], "embeddings", laion[1]), {"shards/00000.parquet": embedded})
    commit_tables(
        storage,
        (laion[0], "identity_clusters", laion[1]),
        {"assignments.parquet": laion_assignments, "centroids.parquet": centroids},
    )

    names = [f"{i:05d}.jpg" for i in range(n)]
    index = pa.table(
        {"file_name": [*names, "faceless.jpg"], "source_file": ["0000.parquet"] * (n + 1)}
        | {"source_row": pa.array(np.arange(n + 1), pa.int64())},
        schema=celebahq.INDEX_SCHEMA,
    )
    faces = face_columns("file_name", names, boxes, scores, np.ones(n, np.int32))
    celebahq_embedded = embedding_table(vectors, PROFILE, faces)
    no_face = pa.table(
        {
            "file_name": ["faceless.jpg"],
            "source_file": ["0000.parquet"],
            "source_row": [n],
            "reason": ["none"],
        },
        schema=celebahq.NO_FACE_SCHEMA,
    )
    celebahq_assignments = assignments_table(pa.table(faces), clusters)
    commit_tables(storage, ("celebahq", "images", "all"), {"index.parquet": index})
    commit_tables(
        storage,
        ("celebahq", "face_embeddings", "all"),
        {"embeddings.parquet": celebahq_embedded, "no_face.parquet": no_face},
    )
    commit_tables(  # the card's export writes an embeddings.parquet beside: not a view's file
        storage,
        ("celebahq", "identity_clusters", "all"),
        {
            "assignments.parquet": celebahq_assignments,
            "centroids.parquet": centroids,
            "embeddings.parquet": celebahq_embedded,
        },
    )

    gallery = assemble_gallery([("laion_face_embeddings[00000]", embedded)])
    commit_tables(storage, ("hyperface", "gallery", "all"), {"gallery.parquet": gallery.table})
    identities = 10
    shards = hyperface.reference_tables(vectors[:identities], "demo", space, REFERENCE_SHARD_SIZE)
    commit_tables(
        storage,
        ("hyperface", "reference_embeddings", "demo"),
        {hyperface.shard_file(shard): table for shard, table in shards},
    )
    return {
        "laion_face_detected": n,
        "laion_face_embeddings": n,
        "laion_face_identity_clusters": n,
        "laion_face_identity_centroids": clusters.identities,
        "celebahq_images": n + 1,
        "celebahq_face_embeddings": n,
        "celebahq_no_face": 1,
        "celebahq_identity_clusters": n,
        "celebahq_identity_centroids": clusters.identities,
        "hyperface_gallery": n,
        "hyperface_reference_embeddings": identities,
        "hyperface_images": 0,
    }


def test_empty_lake_has_the_face_cluster_and_hyperface_views(local_storage):
    with open_catalog(local_storage) as conn:
        counts = view_counts(conn)
        assert {view: counts[view] for view in FACE_VIEWS} == dict.fromkeys(FACE_VIEWS, 0)
        columns = {view: query(conn, f"SELECT * FROM {view}").column_names for view in FACE_VIEWS}
    assert columns["laion_face_identity_clusters"][:4] == ["sample_id", "key", "face_index", "cluster_id"]
    assert columns["celebahq_identity_clusters"][:2] == ["file_name", "face_box"]
    assert {"embedding", "embedder_name", "part"} <= set(columns["laion_face_embeddings"])
    assert {"identity_id", "noise_cosine", "generator_weights_sha256", "part"} <= set(
        columns["hyperface_images"]
    )


def test_face_cluster_celebahq_and_hyperface_views_hold_the_committed_rows(any_storage):
    expected = commit_face_tables(any_storage)
    with open_catalog(any_storage) as conn:
        assert {view: view_counts(conn)[view] for view in FACE_VIEWS} == expected
        parts = {view: single_column(conn, f"SELECT DISTINCT part FROM {view}") for view in FACE_VIEWS}
        joined = query(
            conn,
            "SELECT count(*) AS n, count(DISTINCT c.cluster_id) AS identities FROM laion_face_identity_clusters c "
            "JOIN laion_face_embeddings e USING (part, sample_id, face_index) "
            "JOIN laion_face_detected d USING (part, sample_id, face_index)",
        ).to_pylist()
        lengths = single_column(conn, "SELECT DISTINCT len(embedding) FROM laion_face_identity_centroids")
        same = single_column(
            conn,
            "SELECT count(*) FROM laion_face_identity_clusters l JOIN celebahq_identity_clusters c "
            "ON c.file_name = printf('%05d.jpg', l.sample_id) AND c.cluster_id = l.cluster_id",
        )
        variants = single_column(conn, "SELECT DISTINCT variant FROM hyperface_reference_embeddings")
        shards = single_column(conn, "SELECT shard FROM hyperface_reference_embeddings GROUP BY 1 ORDER BY 1")
        [comment] = single_column(
            conn, "SELECT comment FROM duckdb_views() WHERE view_name = 'hyperface_images'"
        )
    assert parts == {
        view: []
        if view == "hyperface_images"
        else ["00000"]
        if view.startswith("laion")
        else ["demo"]
        if view == "hyperface_reference_embeddings"
        else ["all"]
        for view in FACE_VIEWS
    }
    n = expected["laion_face_embeddings"]
    assert joined == [{"n": n, "identities": expected["laion_face_identity_centroids"]}]
    assert lengths == [16] and same == [n] and variants == ["demo"] and shards == [0, 1, 2]
    assert "Empty unless generator weights" in comment
