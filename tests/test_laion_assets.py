"""The LAION-Face part pipeline as Dagster assets, in process, on the offline world (local disk and S3)."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance

from dagster_project.definitions import build_definitions
from facelake.laion import artifacts
from facelake.laion.download import committed_shards
from facelake.settings import load_settings
from tests.cli_helpers import STATUS_OF_KIND

EXPECTED_STATUS = STATUS_OF_KIND


def run_part(instance: DagsterInstance, images_config: dict | None = None, part: str = "00000"):
    """Materialize the inputs and one part, as the demo and the schedule do."""
    settings = load_settings()
    defs = build_definitions(settings)
    defs.resolve_job_def("laion_face_inputs_job").execute_in_process(instance=instance)
    run_config = {"ops": {"laion_face_images": {"config": images_config}}} if images_config else None
    result = defs.resolve_job_def("laion_face_part_job").execute_in_process(
        partition_key=part, instance=instance, run_config=run_config
    )
    assert result.success
    return settings.storage(), result


def read_table(storage, uri):
    with storage.open(uri, "rb") as handle:
        return pq.read_table(handle)


def samples_table(storage):
    manifest = artifacts.images(storage, "00000").require_manifest()
    [uri] = [
        artifacts.images(storage, "00000").uri(f.path)
        for f in manifest.files
        if f.path.endswith("samples.parquet")
    ]
    return read_table(storage, uri)


def shard_rows(storage):
    shards = committed_shards(storage, artifacts.images(storage, "00000").uri("shards"))
    return [read_table(storage, s.parquet_uri) for s in shards], shards


@pytest.mark.parametrize("world_fixture", ["laion_world", "s3_laion_world"])
def test_part_pipeline_end_to_end(world_fixture, request):
    world = request.getfixturevalue(world_fixture)
    instance = DagsterInstance.ephemeral()
    storage, result = run_part(instance)

    # laion_face_meta: the face rows of the part, in file order
    meta = read_table(storage, artifacts.committed_file(artifacts.meta(storage, "00000"), ".parquet"))
    assert meta["SAMPLE_ID"].to_pylist() == sorted(int(i) for i in world.face_ids)

    # every face id ends in exactly one status, and the counts by status are exact
    samples = samples_table(storage)
    ids = samples["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(world.face_ids)
    status = dict(zip(ids, samples["status"].to_pylist(), strict=True))
    assert status == {sid: EXPECTED_STATUS[kind] for sid, kind in world.kinds.items()}
    expected_counts = Counter(EXPECTED_STATUS[k] for k in world.kinds.values())

    # shards: the union of the part's samples is the input minus the blocklist, no duplicates
    tables, shards = shard_rows(storage)
    shard_ids = [i for t in tables for i in t["SAMPLE_ID"].to_pylist()]
    blocked = world.ids_of("blocked_id", "blocked_url")
    assert len(shard_ids) == len(set(shard_ids))
    assert set(shard_ids) == set(world.kinds) - blocked
    blocked_paths = {world.urls[sid].split("/", 3)[3] for sid in blocked}
    assert not blocked_paths & {p.lstrip("/") for p in world.server.requested_paths()}

    # the webdataset tars hold exactly the successful samples, with the photos' bytes intact
    keys = set()
    for shard in shards:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(shard.tar_uri))) as tar:
            keys |= {m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".jpg")}
    success_keys = set(
        pc.drop_null(samples.filter(pc.equal(samples["status"], "success"))["key"]).to_pylist()
    )
    assert keys == success_keys and len(keys) == expected_counts["success"]

    # materialization metadata and the success-rate check
    images_event = instance.get_latest_materialization_event(AssetKey("laion_face_images"))
    metadata = images_event.asset_materialization.metadata
    assert metadata["counts_by_status"].value == dict(sorted(expected_counts.items()))
    assert images_event.asset_materialization.partition == "00000"
    checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert [c.event_specific_data.passed for c in checks] == [True]

    # released detections: blocked samples dropped, joinable with the download parquet on SAMPLE_ID
    detections = read_table(
        storage, artifacts.committed_file(artifacts.detections(storage, "00000"), ".parquet")
    )
    det_ids = set(detections["sample_id"].to_pylist())
    assert det_ids == set(world.kinds) - blocked
    downloaded = {
        i
        for t in tables
        for i, s in zip(t["SAMPLE_ID"].to_pylist(), t["status"].to_pylist(), strict=True)
        if s == "success"
    }
    assert len(det_ids & downloaded) == expected_counts["success"]
    some = next(iter(sorted(world.ids_of("face"))))
    row = detections.filter(pc.equal(detections["sample_id"], some)).to_pylist()[0]
    assert row["box"] == pytest.approx(world.crops[some].box.tolist(), abs=1e-4)


def test_rerun_is_a_noop_and_config_change_shows_in_the_code_version(laion_world):
    instance = DagsterInstance.ephemeral()
    storage, _ = run_part(instance)
    first = artifacts.images(storage, "00000").require_manifest()
    requests_before = len(laion_world.server.requests)
    run_part(instance)
    assert artifacts.images(storage, "00000").require_manifest().content_hash == first.content_hash
    assert len(laion_world.server.requests) == requests_before, "a committed part is not downloaded again"
    event = instance.get_latest_materialization_event(AssetKey("laion_face_images"))
    assert event.asset_materialization.metadata["reused_committed_partition"].value is True

    def images_code_version(settings) -> str:
        graph = build_definitions(settings).resolve_asset_graph()
        return graph.get(AssetKey("laion_face_images")).code_version

    settings = load_settings()
    before = images_code_version(settings)
    after = images_code_version(
        settings.model_copy(update={"download": settings.download.model_copy(update={"timeout": 30})})
    )
    same = images_code_version(
        settings.model_copy(update={"download": settings.download.model_copy(update={"threads": 99})})
    )
    assert before != after, "an output-relevant setting changes the code version (stale in the UI)"
    assert before == same, "a speed-only setting does not"


def test_server_death_then_retry_completes_the_part_without_refetching(laion_world):
    instance = DagsterInstance.ephemeral()
    server = laion_world.server
    server.die_after(60)
    storage, _ = run_part(instance)
    samples = samples_table(storage)
    first_success = set(samples.filter(pc.equal(samples["status"], "success"))["sample_id"].to_pylist())
    assert 0 < len(first_success) < len(laion_world.ids_of("face", "slow"))
    assert samples.num_rows == len(laion_world.kinds), "every sample has a status even when the server died"

    server.start()
    server.clear_log()
    run_part(instance, images_config={"retry_failed": True})
    refetched = {p.lstrip("/") for p in server.requested_paths()}
    first_paths = {laion_world.urls[s].split("/", 3)[3] for s in first_success}
    assert not refetched & first_paths, "committed successes are not requested again"

    samples = samples_table(storage)
    status = dict(zip(samples["sample_id"].to_pylist(), samples["status"].to_pylist(), strict=True))
    assert status == {sid: EXPECTED_STATUS[kind] for sid, kind in laion_world.kinds.items()}
    tables, _ = shard_rows(storage)
    successes = [
        i
        for t in tables
        for i, s in zip(t["SAMPLE_ID"].to_pylist(), t["status"].to_pylist(), strict=True)
        if s == "success"
    ]
    assert len(successes) == len(set(successes)) == len(laion_world.ids_of("face", "slow"))


def test_blocklist_growth_reaches_every_asset(laion_world):
    instance = DagsterInstance.ephemeral()
    storage, _ = run_part(instance)
    victim = sorted(laion_world.ids_of("face"))[0]
    optout = laion_world.sources / "optout.csv"
    optout.write_text(optout.read_text() + f"{victim},\n")
    run_part(instance)
    samples = samples_table(storage)
    row = samples.filter(pc.equal(samples["sample_id"], victim)).to_pylist()[0]
    assert row["status"] == "opted_out" and row["key"] is None
    detections = read_table(
        storage, artifacts.committed_file(artifacts.detections(storage, "00000"), ".parquet")
    )
    assert victim not in set(detections["sample_id"].to_pylist())
