"""Our own detections and embeddings of a part through ``dagster asset materialize``, as an operator runs them.

A world with small image shards goes through the CLI chain: the inputs, the part's metadata, images and
released detections, then our detections and embeddings. The detection run is SIGKILLed after a few shards
committed and run again, which must reuse those shards untouched. The same two assets then run with the lake
on the local S3 server. Model weights go to a temporary cache dir (``FACELAKE_MODELS__CACHE_DIR``), so
nothing is written into the repository. The CLIs run their steps in-process (``FACELAKE_EXECUTOR=in_process``),
so the SIGKILL hits the step itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from facelake.laion import artifacts
from facelake.lake.commit import MANIFEST, PartitionArtifact
from facelake.lake.shard_stage import DONE_SUFFIX, read_stage_table, shard_name
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import part_image_shards
from facelake.settings import load_settings
from synthetic.world import LaionWorld, WorldSpec, write_config
from tests.cli_helpers import (
    IN_PROCESS,
    INPUTS,
    PART,
    PART_ASSETS,
    cli_env,
    make_dagster_home,
    materialization_records,
    materialize,
    materialize_command,
    materialize_in_process,
    metadata_values,
    served_world,
    start_process,
    stop_process_group,
    wait_for,
    world_definitions,
)

pytestmark = pytest.mark.slow

FACE_ASSETS = ["laion_face_detected", "laion_face_embeddings"]
DETECTOR = "retinaface-mobilenet0.25"
FACE_WORLD = WorldSpec(rows=120, face_rows=80)
SHARD_SIZE = 10
"""Samples per downloaded shard: FACE_WORLD's 75 kept face rows make 8 shards, each a unit of commit."""
S3_WORLD = WorldSpec(rows=60, face_rows=40)
"""A quarter of the default world: the S3 test shows the stages on an S3 root, not their accounting."""
KILL_AFTER = 2
"""Committed detection shards to wait for before the detection run is SIGKILLed."""
KILL_TIMEOUT_S = 240

ShardFiles = dict[str, tuple[int, bytes]]
"""A shard manifest's file name -> (mtime in ns, content)."""


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The weights cache every CLI of this module shares (the detector is imported into it once)."""
    return tmp_path_factory.mktemp("models")


def lake_of_world() -> Storage:
    """The lake of the world whose config is in force."""
    return load_settings().storage()


def committed_shard_files(artifact: PartitionArtifact) -> ShardFiles:
    """The shard manifests (``shards/NNNNN.done.json``) of a local artifact, with mtime and content."""
    paths = Path(artifact.uri("shards")).glob(f"*{DONE_SUFFIX}")
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


@dataclass
class KilledDetection:
    """What a detection run SIGKILLed mid-part left behind."""

    shards: ShardFiles
    manifest_left: bool
    lease_left: bool


def kill_mid_detection(
    env: dict[str, str], artifact: PartitionArtifact, total: int, log: Path
) -> KilledDetection:
    """Start the detection CLI, SIGKILL its process group once KILL_AFTER shards committed, and look."""
    process = start_process(materialize_command(["laion_face_detected"], PART), env, log)
    try:
        wait_for(
            lambda: len(committed_shard_files(artifact)) >= KILL_AFTER or process.poll() is not None,
            KILL_TIMEOUT_S,
            f"{KILL_AFTER} committed detection shards",
            interval_s=0.05,
        )
        assert process.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-4000:]}"
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    finally:
        stop_process_group(process)
    shards = committed_shard_files(artifact)
    assert KILL_AFTER <= len(shards) < total, (
        f"killed with {len(shards)} of {total} shards committed: make the world bigger"
    )
    return KilledDetection(shards, Path(artifact.manifest_uri).exists(), Path(artifact.lease_uri).exists())


@dataclass
class FacePart:
    """Part 00000 through the CLI: detection killed after a few shards and resumed, then embeddings."""

    world: LaionWorld
    home: Path
    lake: Storage
    total_shards: int
    killed: KilledDetection


@pytest.fixture(scope="module")
def face_part(tmp_path_factory, models_dir) -> Iterator[FacePart]:
    base = tmp_path_factory.mktemp("face_cli")
    with served_world(base / "world", FACE_WORLD) as world:
        # before the download, so that the part has many small shards
        write_config(world, FACE_WORLD, number_sample_per_shard=SHARD_SIZE)
        home = make_dagster_home(base / "dagster_home")
        cli = cli_env(home, FACELAKE_MODELS__CACHE_DIR=str(models_dir), **IN_PROCESS)
        lake = lake_of_world()
        materialize(INPUTS, cli)
        materialize(PART_ASSETS, cli, PART)
        total = len(part_image_shards(lake, artifacts.images(lake, PART)))
        detected = artifacts.detected(lake, PART)
        killed = kill_mid_detection(cli, detected, total, base / "killed.log")
        materialize(["laion_face_detected"], cli, PART)  # the same command again
        materialize(["laion_face_embeddings"], cli, PART)
        yield FacePart(world, home, lake, total, killed)


@pytest.fixture
def face_instance(face_part) -> Iterator[DagsterInstance]:
    with DagsterInstance.from_config(str(face_part.home)) as instance:
        yield instance


def latest_metadata(instance: DagsterInstance, asset: str) -> dict:
    records = materialization_records(instance, asset, PART)
    assert records, f"no materialization of {asset} recorded in the DAGSTER_HOME instance"
    return metadata_values(records[0].asset_materialization)


def assert_stage_metadata(metadata: dict) -> None:
    """The throughput and the faces-per-image histogram every face stage reports."""
    assert metadata["images_per_second"] > 0
    assert metadata["images_processed_now"] > 0
    histogram = metadata["faces_per_image_histogram"]
    assert sum(histogram.values()) == metadata["images_processed_now"]
    assert all(faces.isdigit() for faces in histogram)


def assert_faces_in_most_images(world: LaionWorld, lake: Storage) -> None:
    """Faces found in most downloaded images, only in those, and one embedding per face."""
    successes = world.ids_of("face", "slow")
    detected = read_stage_table(lake, artifacts.detected(lake, PART), columns=["sample_id"])
    with_faces = set(detected["sample_id"].to_pylist())
    assert with_faces <= successes and len(with_faces) >= 0.9 * len(successes)
    embeddings = artifacts.embeddings(lake, PART).require_manifest()
    assert embeddings.rows == detected.num_rows, "one embedding per detected face"


def test_the_cli_chain_commits_detections_and_embeddings(face_part):
    for name, artifact_of in (("detected", artifacts.detected), ("embeddings", artifacts.embeddings)):
        artifact = artifact_of(face_part.lake, PART)
        manifest = artifact.manifest()
        assert manifest is not None, f"{name}: no {MANIFEST} after the CLI exited 0"
        assert manifest.extra["shards"] == face_part.total_shards
        assert all(Path(artifact.uri(f.path)).is_file() for f in manifest.files)
    assert_faces_in_most_images(face_part.world, face_part.lake)


def test_instance_records_throughput_histogram_and_models(face_part, face_instance):
    detected = latest_metadata(face_instance, "laion_face_detected")
    assert_stage_metadata(detected)
    assert detected["detector"] == DETECTOR
    assert detected["rows"] == artifacts.detected(face_part.lake, PART).require_manifest().rows
    embeddings = latest_metadata(face_instance, "laion_face_embeddings")
    assert_stage_metadata(embeddings)
    assert embeddings["embedder"].startswith("dlib") and embeddings["random_init"] is False
    successes = len(face_part.world.ids_of("face", "slow"))
    assert embeddings["images_processed_now"] == successes, "every downloaded image, all shards done now"
    assert embeddings["shards_done_now"] == face_part.total_shards


def test_agreement_with_the_released_detections_is_recorded(face_part, face_instance):
    key = AssetCheckKey(AssetKey("laion_face_detected"), "agrees_with_released_detections")
    record = face_instance.get_latest_asset_check_evaluation_record(key)
    assert record is not None
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.passed is True, evaluation.metadata
    (detected,) = materialization_records(face_instance, "laion_face_detected", PART)
    assert record.run_id == detected.run_id


def test_model_weights_go_to_the_configured_cache(face_part, models_dir):
    assert any(models_dir.iterdir()), "the detector's weights were imported into FACELAKE_MODELS__CACHE_DIR"


def test_a_killed_detection_leaves_committed_shards_and_no_manifest(face_part):
    killed = face_part.killed
    assert not killed.manifest_left, f"a killed run left {MANIFEST}"
    assert killed.lease_left, "SIGKILL gives the run no chance to release its lease"
    assert sorted(killed.shards) == [f"{shard_name(i)}{DONE_SUFFIX}" for i in range(len(killed.shards))]


def test_the_rerun_reuses_the_killed_runs_shards_untouched(face_part, face_instance):
    killed = face_part.killed.shards
    artifact = artifacts.detected(face_part.lake, PART)
    now = committed_shard_files(artifact)
    assert {name: now[name] for name in killed} == killed, "a shard committed before the kill was redone"
    manifest = artifact.require_manifest()
    listed = {f.path for f in manifest.files}
    assert listed == {
        f"shards/{shard_name(i)}{suffix}"
        for i in range(face_part.total_shards)
        for suffix in (".parquet", DONE_SUFFIX)
    }
    (record,) = materialization_records(face_instance, "laion_face_detected", PART)
    metadata = metadata_values(record.asset_materialization)
    assert metadata["shards_reused"] == len(killed)
    assert metadata["shards_done_now"] == face_part.total_shards - len(killed)
    assert metadata["reused_committed_partition"] is False
    assert not Path(artifact.lease_uri).exists(), "the rerun took over the dead run's lease and released it"


@pytest.fixture
def small_s3_world(tmp_path, s3_storage) -> Iterator[LaionWorld]:
    """Like conftest's ``s3_laion_world`` (the lake in a fresh bucket on the local S3 server), but smaller."""
    with served_world(tmp_path / "world", S3_WORLD) as world:
        s3 = s3_storage.s3
        credentials = {"endpoint_url": s3.endpoint_url, "key": s3.key, "secret": s3.secret}
        write_config(world, S3_WORLD, root=s3_storage.root, s3=credentials)
        yield world


def test_detections_and_embeddings_on_an_s3_root(small_s3_world, models_dir, tmp_path):
    assert load_settings().root.startswith("s3://")
    defs = world_definitions()
    assert materialize_in_process(defs, INPUTS).success
    assert materialize_in_process(defs, PART_ASSETS, partition=PART).success
    home = make_dagster_home(tmp_path / "dagster_home")
    materialize(FACE_ASSETS, cli_env(home, FACELAKE_MODELS__CACHE_DIR=str(models_dir), **IN_PROCESS), PART)
    lake = lake_of_world()
    assert_faces_in_most_images(small_s3_world, lake)
    for artifact_of in (artifacts.detected, artifacts.embeddings):
        artifact = artifact_of(lake, PART)
        assert artifact.prefix.startswith("s3://")
        assert all(lake.exists(uri) for uri in artifact.file_uris())
    with DagsterInstance.from_config(str(home)) as instance:
        for asset in FACE_ASSETS:
            assert latest_metadata(instance, asset)["uri"].startswith("s3://")
