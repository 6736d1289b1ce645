"""Our own detections and identity embeddings of a downloaded part, as GPU-tagged Dagster assets."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
from dagster import AssetKey, DagsterInstance

from dagster_project.definitions import build_definitions
from facelake.faces.detection_compare import box_iou
from facelake.faces.detection_table import detection_arrays
from facelake.faces.identity import table_embeddings, table_space
from facelake.laion import artifacts
from facelake.lake.shard_stage import read_stage_table
from facelake.settings import load_settings
from tests.test_laion_assets import run_part


def run_faces(instance: DagsterInstance):
    defs = build_definitions(load_settings())
    result = defs.resolve_job_def("laion_face_faces_job").execute_in_process(
        partition_key="00000", instance=instance
    )
    assert result.success
    return result


@pytest.fixture
def models_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELAKE_MODELS__CACHE_DIR", str(tmp_path / "models"))


def test_assets_carry_the_gpu_pool_and_tags():
    defs = build_definitions(load_settings())
    for name in ("laion_face_detected", "laion_face_embeddings"):
        node = defs.resolve_assets_def(name)
        [op_def] = [node.node_def]
        assert op_def.tags["dagster-celery/queue"] == "gpu"
        assert "nvidia.com/gpu" in str(op_def.tags["dagster-k8s/config"])
        assert op_def.pool == "gpu"


@pytest.mark.parametrize("world_fixture", ["laion_world", "s3_laion_world"])
def test_detect_and_embed_a_part(world_fixture, request, models_cache):
    world = request.getfixturevalue(world_fixture)
    instance = DagsterInstance.ephemeral()
    storage, _ = run_part(instance)
    result = run_faces(instance)

    detected = read_stage_table(storage, artifacts.detected(storage, "00000"))
    assert set(detected["detector"].to_pylist()) == {"retinaface-mobilenet0.25"}
    arrays = detection_arrays(detected)
    found = 0
    successes = world.ids_of("face", "slow")
    for sid in successes:
        rows = np.flatnonzero(arrays["sample_id"] == sid)
        if len(rows):
            found += box_iou(arrays["box"][rows], world.crops[sid].box[None]).max() >= 0.5
    assert found >= 0.9 * len(successes), "the face of most crops is found where it is"
    assert set(arrays["sample_id"].tolist()) <= successes, "only downloaded, not opted-out images are read"

    [check] = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    metadata = check.event_specific_data.metadata
    assert check.event_specific_data.passed, metadata
    assert metadata["recall"].value >= 0.9

    embeddings = read_stage_table(storage, artifacts.embeddings(storage, "00000"))
    assert embeddings.num_rows == detected.num_rows
    space = table_space(embeddings)
    assert space["embedder_name"].startswith("dlib") and space["embedder_random_init"] is False
    vectors = table_embeddings(embeddings)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    top = pc.equal(embeddings["face_index"], 0)
    ids = embeddings.filter(top)["sample_id"].to_numpy()
    top_vectors = vectors[np.asarray(top)]
    photo = np.array([world.crops[int(s)].source for s in ids])
    same = top_vectors[photo == "astronaut"] @ top_vectors[photo == "astronaut"].T
    other = top_vectors[photo == "astronaut"] @ top_vectors[photo == "grace_hopper"].T
    assert np.median(same) > np.median(other) + 0.05, "copies of one person are closer than two people"

    event = instance.get_latest_materialization_event(AssetKey("laion_face_detected"))
    meta = event.asset_materialization.metadata
    assert meta["images_processed_now"].value == len(successes)
    assert sum(meta["faces_per_image_histogram"].value.values()) == len(successes)


def test_resume_reuses_committed_shards(laion_world, models_cache):
    instance = DagsterInstance.ephemeral()
    storage, _ = run_part(instance)
    run_faces(instance)
    artifact = artifacts.detected(storage, "00000")
    manifest = artifact.require_manifest()
    done = sorted(f.path for f in manifest.files if f.path.endswith(".done.json"))
    assert len(done) == 4
    # the state a kill leaves after three of four shards: no partition manifest, one shard uncommitted
    artifact.uncommit()
    storage.rm(artifact.uri(done[-1]), recursive=False)
    run_faces(instance)
    event = instance.get_latest_materialization_event(AssetKey("laion_face_detected"))
    meta = event.asset_materialization.metadata
    assert meta["shards_reused"].value == 3 and meta["shards_done_now"].value == 1

    def parquet_hashes(m):
        return {f.path: f.sha256 for f in m.files if f.path.endswith(".parquet")}

    assert parquet_hashes(artifact.require_manifest()) == parquet_hashes(manifest), "same detections"
