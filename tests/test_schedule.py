"""``laion_face_20m_schedule`` evaluated tick by tick on a real (temporary, SQLite) Dagster instance.

The schedule requests parts of the 20M subset that have no committed download and detections and no
queued/running run of ``laion_face_part_job`` on the instance, at most ``max_in_flight`` (2 in the world's
settings) in flight. In-flight runs are real run records created on the instance; committed parts are
materialized for real by the part job on the offline world.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    build_schedule_context,
)
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_run_id

from facelake.laion import artifacts
from facelake.laion.formats import LAION_20M_PARTS
from facelake.settings import load_settings
from tests.cli_helpers import (
    PART,
    REPO_ROOT,
    make_dagster_home,
    materialize_part_in_process,
    world_definitions,
)

SCHEDULE = "laion_face_20m_schedule"
PART_JOB = "laion_face_part_job"


@pytest.fixture
def defs(laion_world) -> Definitions:
    return world_definitions()


@pytest.fixture
def instance(tmp_path) -> Iterator[DagsterInstance]:
    with DagsterInstance.from_config(str(make_dagster_home(tmp_path / "dagster_home"))) as instance:
        yield instance


def requested_parts(defs: Definitions, instance: DagsterInstance) -> list[str] | str:
    """One tick: the partition keys requested, in order, or the skip message."""
    schedule = defs.resolve_schedule_def(SCHEDULE)
    with build_schedule_context(
        instance=instance, resources=defs.resources, repository_def=defs.get_repository_def()
    ) as context:
        tick = schedule.evaluate_tick(context)
    if tick.skip_message is not None:
        assert not tick.run_requests
        return tick.skip_message
    for request in tick.run_requests:
        assert request.tags["facelake/requested_by"] == "schedule"
        assert request.job_name in (None, PART_JOB)
    return [request.partition_key for request in tick.run_requests]


def job_origin(job: str) -> RemoteJobOrigin:
    """Where a launched run's job is loaded from (Dagster requires one on queued runs): this code location."""
    target = LoadableTargetOrigin(
        executable_path=sys.executable, module_name="dagster_project", working_directory=str(REPO_ROOT)
    )
    location = InProcessCodeLocationOrigin(target, location_name="facelake")
    return RemoteRepositoryOrigin(location, "__repository__").get_job_origin(job)


def add_run(
    instance: DagsterInstance,
    part: str,
    status: DagsterRunStatus,
    job: str = PART_JOB,
    asset_selection: frozenset[AssetKey] | None = None,
) -> DagsterRun:
    """A run record of ``job`` for ``part`` with ``status``, as the daemon or a manual launch leaves it."""
    tags = {"dagster/partition": part} if part else {}
    run = DagsterRun(
        job_name=job,
        run_id=make_new_run_id(),
        status=status,
        tags=tags,
        remote_job_origin=job_origin(job),
        asset_selection=asset_selection,
    )
    return instance.add_run(run)


def test_schedule_runs_the_20m_subset_two_at_a_time(defs):
    settings = load_settings()
    assert settings.schedule_parts() == LAION_20M_PARTS
    assert settings.schedule.max_in_flight == 2
    schedule = defs.resolve_schedule_def(SCHEDULE)
    assert schedule.job_name == PART_JOB


def test_nothing_committed_and_nothing_in_flight_requests_the_first_parts(defs, instance):
    assert requested_parts(defs, instance) == ["00000", "00002"]


def test_parts_in_flight_are_not_requested_and_use_up_the_budget(defs, instance):
    add_run(instance, "00000", DagsterRunStatus.QUEUED)
    add_run(instance, "00002", DagsterRunStatus.FAILURE)  # finished: may be requested again
    add_run(instance, "", DagsterRunStatus.STARTED, job="laion_face_inputs_job")  # another job
    assert requested_parts(defs, instance) == ["00002"]


def test_all_in_flight_skips_with_a_reason(defs, instance):
    add_run(instance, "00000", DagsterRunStatus.QUEUED)
    add_run(instance, "00002", DagsterRunStatus.STARTED)
    message = requested_parts(defs, instance)
    assert message == "2 part(s) in flight (limit 2); nothing else to request"


def test_manual_runs_of_parts_outside_the_subset_count_against_the_budget(defs, instance):
    add_run(instance, "00001", DagsterRunStatus.STARTED)
    assert requested_parts(defs, instance) == ["00000"]
    add_run(instance, "00003", DagsterRunStatus.STARTING)
    assert isinstance(requested_parts(defs, instance), str)


def test_a_cli_asset_run_of_a_part_counts_as_in_flight(defs, instance):
    """`dagster asset materialize --select laion_face_images --partition 00000` runs as __ASSET_JOB."""
    add_run(
        instance,
        "00000",
        DagsterRunStatus.STARTED,
        job="__ASSET_JOB",
        asset_selection=frozenset({AssetKey("laion_face_images")}),
    )
    add_run(
        instance,
        "00002",
        DagsterRunStatus.STARTED,
        job="__ASSET_JOB",
        asset_selection=frozenset({AssetKey("laion_face_report")}),
    )
    assert requested_parts(defs, instance) == ["00002"]


def test_a_committed_part_is_skipped_until_its_detections_are_gone(defs, instance):
    part_run_id = materialize_part_in_process(defs, instance)
    assert instance.get_run_by_id(part_run_id).status == DagsterRunStatus.SUCCESS
    assert requested_parts(defs, instance) == ["00002", "00005"]
    artifacts.detections(load_settings().storage(), PART).uncommit()
    assert requested_parts(defs, instance) == ["00000", "00002"]
