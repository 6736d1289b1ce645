"""The code location end to end through ``dagster asset materialize``, as CI and an operator run it.

Each CLI is a subprocess with its own DAGSTER_HOME (``deploy/dagster.local.yaml``); the world's image server
runs in this process, so the subprocesses download from it. What the runs commit (manifests in the lake)
and what the instance records (materializations, metadata, check evaluations) are read back and compared
with what the world says a correct pipeline makes of it. Most CLIs run their steps in-process
(``FACELAKE_EXECUTOR=in_process``) to save an import per step; the scheduled run of the lock test and the
Postgres test (test_postgres_instance.py) use the default multiprocess executor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, DagsterRunStatus

from facelake.laion import artifacts
from facelake.laion.formats import META_PART_TEMPLATE
from facelake.lake.commit import MANIFEST, Manifest
from facelake.lake.storage import Storage
from facelake.settings import load_settings
from synthetic.laion_pth import write_malicious_pth
from synthetic.world import LaionWorld, WorldSpec
from tests.cli_helpers import (
    CODE_LOCATION,
    IN_PROCESS,
    INPUTS,
    PART,
    PART_ASSETS,
    cli_env,
    dagster_command,
    data_version,
    expected_download_counts,
    make_dagster_home,
    materialization_records,
    materialize,
    materialize_command,
    materialize_in_process,
    metadata_values,
    run_cli,
    served_world,
    start_process,
    step_failure_text,
    stop_process_group,
    wait_for,
    world_definitions,
)

pytestmark = pytest.mark.slow

ARTIFACT_OF = {
    "laion_face_ids": lambda lake: artifacts.face_ids(lake),
    "laion_face_optout": lambda lake: artifacts.optout(lake),
    "laion_face_meta": lambda lake: artifacts.meta(lake, PART),
    "laion_face_images": lambda lake: artifacts.images(lake, PART),
    "laion_face_detections": lambda lake: artifacts.detections(lake, PART),
}


def world_lake() -> Storage:
    """The lake of the world whose config is in force."""
    return load_settings().storage()


@dataclass
class CliPart:
    """Part 00000 materialized step by step through the CLI, then its metadata asked for again."""

    world: LaionWorld
    home: Path
    lake: Storage
    meta_manifest_before_rerun: Manifest


@pytest.fixture(scope="module")
def cli_part(tmp_path_factory) -> Iterator[CliPart]:
    base = tmp_path_factory.mktemp("cli_part")
    with served_world(base / "world") as world:
        home = make_dagster_home(base / "dagster_home")
        cli = cli_env(home, **IN_PROCESS)
        lake = world_lake()
        materialize(INPUTS, cli)  # each call fails the fixture, with the CLI's output, unless it exits 0
        for asset in PART_ASSETS:
            materialize([asset], cli, PART)
        before = artifacts.meta(lake, PART).require_manifest()
        materialize(["laion_face_meta"], cli, PART)
        yield CliPart(world, home, lake, before)


@pytest.fixture
def cli_instance(cli_part) -> Iterator[DagsterInstance]:
    with DagsterInstance.from_config(str(cli_part.home)) as instance:
        yield instance


def test_each_cli_step_commits_its_manifest(cli_part):
    for asset, artifact_of in ARTIFACT_OF.items():
        manifest = artifact_of(cli_part.lake).manifest()
        assert manifest is not None, f"{asset}: no {MANIFEST} after a successful CLI run"
        assert manifest.files and all(
            cli_part.lake.exists(artifact_of(cli_part.lake).uri(f.path)) for f in manifest.files
        )
    ids = artifacts.face_ids(cli_part.lake).require_manifest()
    assert ids.rows == len(cli_part.world.face_ids)
    assert artifacts.meta(cli_part.lake, PART).require_manifest().rows == len(cli_part.world.face_ids)


def test_download_counts_by_status_are_exactly_the_worlds(cli_part):
    expected = expected_download_counts(cli_part.world)
    assert expected == {"success": 142, "failed_to_download": 9, "failed_to_resize": 4, "opted_out": 5}
    summary = artifacts.images(cli_part.lake, PART).require_manifest().extra
    assert summary["by_status"] == expected
    assert summary["success_rate"] == pytest.approx(expected["success"] / (160 - expected["opted_out"]))


def test_instance_records_every_asset_partition_with_its_metadata(cli_part, cli_instance):
    expected_counts = expected_download_counts(cli_part.world)
    for asset, artifact_of in ARTIFACT_OF.items():
        partition = PART if asset in PART_ASSETS else None
        records = materialization_records(cli_instance, asset, partition)
        assert records, f"no materialization of {asset} recorded in the DAGSTER_HOME instance"
        first = records[-1].asset_materialization
        assert first.partition == partition
        manifest = artifact_of(cli_part.lake).require_manifest()
        metadata = metadata_values(first)
        assert metadata["uri"] == artifact_of(cli_part.lake).prefix
        assert metadata["rows"] == manifest.rows
        assert metadata["content_hash"] == manifest.content_hash
        assert metadata["reused_committed_partition"] is False
        assert data_version(first) == f"{manifest.content_hash[:16]}-{manifest.config_hash}"
    images = metadata_values(
        materialization_records(cli_instance, "laion_face_images", PART)[0].asset_materialization
    )
    assert images["counts_by_status"] == expected_counts
    assert images["success_rate"] == pytest.approx(142 / 155)
    assert images["rows"] == 160
    detections = metadata_values(
        materialization_records(cli_instance, "laion_face_detections", PART)[0].asset_materialization
    )
    blocked = len(cli_part.world.ids_of("blocked_id", "blocked_url"))
    assert (detections["faces"], detections["blocked_faces"]) == (160, blocked)
    assert detections["rows"] == 160 - blocked


def test_success_rate_check_evaluation_is_recorded(cli_part, cli_instance):
    record = cli_instance.get_latest_asset_check_evaluation_record(
        AssetCheckKey(AssetKey("laion_face_images"), "success_rate")
    )
    assert record is not None
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.passed is True
    assert evaluation.metadata["success_rate"].value == pytest.approx(142 / 155)
    images_runs = {r.run_id for r in materialization_records(cli_instance, "laion_face_images", PART)}
    assert record.run_id in images_runs


def test_rerunning_a_committed_part_is_a_no_op(cli_part, cli_instance):
    rerun, first = materialization_records(cli_instance, "laion_face_meta", PART)[:2]
    assert metadata_values(rerun.asset_materialization)["reused_committed_partition"] is True
    assert metadata_values(first.asset_materialization)["reused_committed_partition"] is False
    assert data_version(rerun.asset_materialization) == data_version(first.asset_materialization)
    assert artifacts.meta(cli_part.lake, PART).require_manifest() == cli_part.meta_manifest_before_rerun


def test_unknown_partition_key_fails_and_writes_nothing(laion_world, tmp_path):
    home = make_dagster_home(tmp_path / "dagster_home")
    result = materialize(["laion_face_meta"], cli_env(home, **IN_PROCESS), "00099", check=False)
    assert result.returncode != 0
    assert "00099" in result.output and "partition" in result.output.lower()
    lake = world_lake()
    assert not lake.exists(lake.uri("laion_face", "meta", "00099"))
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []


# --- bad inputs: the run fails naming the file and the problem, and commits nothing --------------------


def corrupt_meta_part(world: LaionWorld, tmp_path: Path) -> tuple[Path, str]:
    path = world.sources / "laion400m-meta" / META_PART_TEMPLATE.format(part=0)
    path.write_bytes(b"this is not parquet " * 64)
    return path, "not a readable parquet file"


def meta_part_without_sample_id(world: LaionWorld, tmp_path: Path) -> tuple[Path, str]:
    path = world.sources / "laion400m-meta" / META_PART_TEMPLATE.format(part=0)
    table = pq.read_table(path).drop_columns(["SAMPLE_ID"])
    pq.write_table(pa.table({"URL": table["URL"], "TEXT": table["TEXT"]}), path)
    return path, "no SAMPLE_ID column"


def truncated_face_ids(world: LaionWorld, tmp_path: Path) -> tuple[Path, str]:
    path = world.sources / "laion_face_ids.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "truncated or not a torch file"


def malicious_face_ids(world: LaionWorld, tmp_path: Path) -> tuple[Path, str]:
    path = world.sources / "laion_face_ids.pth"
    write_malicious_pth(str(path), str(tmp_path / "marker"), via="os.system")
    return path, "refused to unpickle"


BAD_INPUTS = {
    "corrupt_meta_part": (corrupt_meta_part, "laion_face_meta"),
    "meta_part_without_sample_id": (meta_part_without_sample_id, "laion_face_meta"),
    "truncated_face_ids": (truncated_face_ids, "laion_face_ids"),
    "malicious_face_ids": (malicious_face_ids, "laion_face_ids"),
}


def assert_nothing_committed(asset: str, lake: Storage, tmp_path: Path) -> None:
    artifact = ARTIFACT_OF[asset](lake)
    assert artifact.manifest() is None, f"{asset}: a manifest was committed from a bad input"
    assert not (tmp_path / "marker").exists(), "the malicious pickle's payload ran"


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_in_process_naming_the_file(case, laion_world, tmp_path):
    spoil, failing_asset = BAD_INPUTS[case]
    path, problem = spoil(laion_world, tmp_path)
    defs = world_definitions()
    inputs = materialize_in_process(defs, INPUTS, raise_on_error=False)
    if failing_asset == "laion_face_meta":
        assert inputs.success
        result = materialize_in_process(defs, [failing_asset], partition=PART, raise_on_error=False)
    else:
        result = inputs
    assert not result.success
    message = step_failure_text(result)
    assert f"{path}: " in message and problem in message, message
    assert_nothing_committed(failing_asset, world_lake(), tmp_path)


@pytest.mark.parametrize("case", ["corrupt_meta_part", "malicious_face_ids"])
def test_bad_input_fails_through_the_cli_naming_the_file(case, laion_world, tmp_path):
    spoil, failing_asset = BAD_INPUTS[case]
    path, problem = spoil(laion_world, tmp_path)
    cli = cli_env(make_dagster_home(tmp_path / "dagster_home"), **IN_PROCESS)
    if failing_asset == "laion_face_meta":
        assert materialize_in_process(world_definitions(), INPUTS).success
        result = materialize([failing_asset], cli, PART, check=False)
    else:
        result = materialize(INPUTS, cli, check=False)
    assert result.returncode != 0
    assert f"{path}: " in result.output and problem in result.output, result.output[-4000:]
    assert_nothing_committed(failing_asset, world_lake(), tmp_path)


# --- one writer per partition ------------------------------------------------------------------------------

SCHEDULED_TAGS = {"dagster/partition": PART, "facelake/requested_by": "schedule"}
SLOW_DELAY_S = 10.0
"""Long enough that the manual CLI (about 6 s to start and reach its step) meets the scheduled run's lease."""


@pytest.fixture
def slow_world(tmp_path) -> Iterator[LaionWorld]:
    """A world whose slow URLs answer after SLOW_DELAY_S, so a download holds its lease that long at least."""
    with served_world(tmp_path / "world", WorldSpec(slow_delay_s=SLOW_DELAY_S)) as world:
        yield world


def test_scheduled_and_manual_runs_of_one_part_never_write_at_once(slow_world, tmp_path):
    """A manual run started while the scheduled one holds the download's lease fails and writes nothing."""
    defs = world_definitions()
    assert materialize_in_process(defs, INPUTS).success
    assert materialize_in_process(defs, ["laion_face_meta"], partition=PART).success
    lake = world_lake()
    lease = Path(artifacts.images(lake, PART).lease_uri)
    scheduled_home = make_dagster_home(tmp_path / "scheduled_home")
    manual_home = make_dagster_home(tmp_path / "manual_home")
    # What a schedule tick launches: the part job, tagged with the partition and who asked for it.
    scheduled_command = dagster_command(
        "job", "execute", *CODE_LOCATION, "-j", "laion_face_part_job", "--tags", json.dumps(SCHEDULED_TAGS)
    )
    scheduled = start_process(scheduled_command, cli_env(scheduled_home), tmp_path / "scheduled.log")
    try:
        wait_for(lambda: lease.exists() or scheduled.poll() is not None, 120, f"{lease} of the scheduled run")
        assert scheduled.poll() is None, (tmp_path / "scheduled.log").read_text()[-4000:]
        holder = json.loads(lease.read_text())["owner"]
        manual = run_cli(
            materialize_command(["laion_face_images"], PART),
            cli_env(manual_home, **IN_PROCESS),
        )
        still_held = lease.exists()
        scheduled_rc = scheduled.wait(timeout=300)
    finally:
        stop_process_group(scheduled)
    scheduled_log = (tmp_path / "scheduled.log").read_text()
    assert scheduled_rc == 0, scheduled_log[-4000:]

    assert still_held, (
        f"the scheduled run let go of {lease} before the manual run was done: raise SLOW_DELAY_S"
    )
    assert manual.returncode != 0, manual.output[-4000:]
    assert "PartitionLockedError" in manual.output
    assert "partition is being written by run" in manual.output
    assert "refusing a second concurrent writer" in manual.output

    with DagsterInstance.from_config(str(scheduled_home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS and run.tags["facelake/requested_by"] == "schedule"
        assert holder.startswith(f"run {run.run_id} ")
        (record,) = materialization_records(instance, "laion_face_images", PART)
        assert record.run_id == run.run_id
        committed = metadata_values(record.asset_materialization)["content_hash"]
    with DagsterInstance.from_config(str(manual_home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.FAILURE
        assert materialization_records(instance, "laion_face_images", PART) == []
    manifest = artifacts.images(lake, PART).require_manifest()
    assert manifest.content_hash == committed
    assert manifest.extra["by_status"] == expected_download_counts(slow_world)
    assert not lease.exists()
