"""The resumable per-shard stage: kill and resume, invalidation, uncommitted leftovers (local disk and S3)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from facelake.lake.commit import PartitionArtifact, materialize_partition
from facelake.lake.shard_stage import read_stage_table, run_shard_stage

SHARDS = [0, 1, 2, 3, 4]


class Crash(RuntimeError):
    """A simulated kill of the process in the middle of a partition."""


class Recorder:
    """A process function that counts its calls and can crash once on a chosen shard."""

    def __init__(self, crash_on: int | None = None, scale: int = 1) -> None:
        self.calls: list[int] = []
        self.crash_on = crash_on
        self.scale = scale

    def __call__(self, shard_id: int) -> pa.Table:
        self.calls.append(shard_id)
        if shard_id == self.crash_on:
            self.crash_on = None
            raise Crash(f"killed while processing shard {shard_id}")
        n = shard_id + 1
        return pa.table(
            {"shard": [shard_id] * n, "value": [shard_id * 100 * self.scale + i for i in range(n)]}
        )


def materialize(artifact, process, partition_config=None, code_version="1", force=False, **stage):
    def write(attempt):
        return run_shard_stage(attempt, SHARDS, process, **stage).written()

    return materialize_partition(
        artifact,
        partition_config or {"model": "a"},
        code_version,
        "test",
        write,
        force=force,
        keep=("shards/",),
    )


def expected_values(scale: int = 1) -> list[int]:
    return [s * 100 * scale + i for s in SHARDS for i in range(s + 1)]


def test_a_kill_mid_partition_resumes_without_redoing_finished_shards(any_storage):
    artifact = PartitionArtifact(any_storage, "demo", "stage", "00000")
    process = Recorder(crash_on=2)
    with pytest.raises(Crash):
        materialize(artifact, process)
    assert process.calls == [0, 1, 2]
    assert artifact.manifest() is None, "a killed partition has no manifest"
    names = sorted(u.rsplit("/", 1)[-1] for u in any_storage.find(artifact.uri("shards")))
    assert names == ["00000.done.json", "00000.parquet", "00001.done.json", "00001.parquet"]

    process.calls.clear()
    outcome = materialize(artifact, process)
    assert process.calls == [2, 3, 4], "only the unfinished shards are processed again"
    manifest = outcome.manifest
    assert [f.path for f in manifest.files] == [
        f"shards/{s:05d}{suffix}" for s in SHARDS for suffix in (".done.json", ".parquet")
    ]
    assert manifest.rows == sum(s + 1 for s in SHARDS)
    assert manifest.extra["shards_done_now"] == 3 and manifest.extra["shards_reused"] == 2
    assert read_stage_table(any_storage, artifact)["value"].to_pylist() == expected_values()


def test_config_or_code_change_invalidates_every_shard(local_storage):
    artifact = PartitionArtifact(local_storage, "demo", "stage", "00000")
    materialize(artifact, Recorder())
    again = Recorder(scale=2)
    materialize(artifact, again, partition_config={"model": "b"})
    assert again.calls == SHARDS
    assert read_stage_table(local_storage, artifact)["value"].to_pylist() == expected_values(2)
    newer = Recorder(scale=3)
    materialize(artifact, newer, partition_config={"model": "b"}, code_version="2")
    assert newer.calls == SHARDS
    assert read_stage_table(local_storage, artifact)["value"].to_pylist() == expected_values(3)


def test_forced_partition_reuses_committed_shards_unless_redo(local_storage):
    artifact = PartitionArtifact(local_storage, "demo", "stage", "00000")
    first = materialize(artifact, Recorder()).manifest
    reuse = Recorder()
    second = materialize(artifact, reuse, force=True).manifest
    assert reuse.calls == [] and second.content_hash == first.content_hash
    redo = Recorder()
    materialize(artifact, redo, force=True, redo=True)
    assert redo.calls == SHARDS


def test_changed_input_fingerprint_redoes_only_that_shard(local_storage):
    artifact = PartitionArtifact(local_storage, "demo", "stage", "00000")
    inputs = {s: f"tar-{s}-v1" for s in SHARDS}
    materialize(artifact, Recorder(), fingerprint=inputs.get)
    inputs[3] = "tar-3-v2"
    process = Recorder()
    materialize(artifact, process, force=True, fingerprint=inputs.get)
    assert process.calls == [3]


def test_upstream_change_redoes_only_shards_whose_input_changed(local_storage):
    artifact = PartitionArtifact(local_storage, "demo", "stage", "00000")
    inputs = {s: f"keys-{s}" for s in SHARDS}
    stage = {"config": {"model": "a"}, "fingerprint": inputs.get}
    materialize(artifact, Recorder(), partition_config={"model": "a", "images": "manifest-1"}, **stage)
    inputs[1] = "keys-1-without-an-opted-out-sample"
    process = Recorder()
    manifest = materialize(
        artifact, process, partition_config={"model": "a", "images": "manifest-2"}, **stage
    ).manifest
    assert process.calls == [1]
    assert manifest.config["images"] == "manifest-2" and manifest.rows == sum(s + 1 for s in SHARDS)


def test_uncommitted_or_damaged_shard_outputs_are_deleted_and_redone(any_storage):
    artifact = PartitionArtifact(any_storage, "demo", "stage", "00000")
    process = Recorder(crash_on=4)
    with pytest.raises(Crash):
        materialize(artifact, process)
    # a kill between a parquet and its shard manifest leaves a parquet alone; a damaged parquet its size
    any_storage.write_bytes(artifact.uri("shards/00004.parquet"), b"half a parquet")
    any_storage.write_bytes(artifact.uri("shards/00001.parquet"), b"replaced behind our back")
    process.calls.clear()
    materialize(artifact, process)
    assert process.calls == [1, 4]
    assert read_stage_table(any_storage, artifact)["value"].to_pylist() == expected_values()


def test_shards_no_longer_requested_are_dropped_from_the_partition(local_storage):
    artifact = PartitionArtifact(local_storage, "demo", "stage", "00000")
    materialize(artifact, Recorder())

    def write(attempt):
        return run_shard_stage(attempt, [0, 1], Recorder()).written()

    manifest = materialize_partition(artifact, {"model": "a"}, "1", "t", write, force=True, keep=("shards/",))
    assert manifest.manifest.rows == 3
    left = sorted(u.rsplit("/", 1)[-1] for u in local_storage.find(artifact.uri("shards")))
    assert left == ["00000.done.json", "00000.parquet", "00001.done.json", "00001.parquet"]


def test_read_stage_table_reads_only_what_the_manifest_lists(local_storage):
    artifact = PartitionArtifact(local_storage, "demo", "stage", "00000")
    with pytest.raises(FileNotFoundError, match="no committed partition"):
        read_stage_table(local_storage, artifact)
    materialize(artifact, Recorder())
    local_storage.write_bytes(artifact.uri("shards/00009.parquet"), b"a stray file")
    table = read_stage_table(local_storage, artifact, columns=["value"])
    assert table.column_names == ["value"] and table["value"].to_pylist() == expected_values()


def test_process_must_return_a_table_and_shard_ids_must_be_unique(local_storage):
    artifact = PartitionArtifact(local_storage, "demo", "stage", "00000")
    attempt = artifact.begin({"model": "a"}, "1", keep=("shards/",))
    with pytest.raises(TypeError, match="shard 0: process returned list"):
        run_shard_stage(attempt, [0], lambda shard_id: [1, 2])
    with pytest.raises(ValueError, match="unique"):
        run_shard_stage(attempt, [1, 1], Recorder())
