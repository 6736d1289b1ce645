"""The part-download schedule: each tick requests the parts with no committed manifest and no run in flight.

A schedule's run_key only de-duplicates within one tick, and a part download spans many ticks, so the
instance is asked for queued/running runs of the job instead (DESIGN §8).
"""

from dagster import (
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from assets.laion_face.jobs import LAION_PART_ASSETS, laion_face_part_job
from facelake.laion import artifacts
from facelake.laion.scheduling import plan_part_requests
from facelake.settings import FacelakeSettings
from resources import StorageResource

IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def parts_in_flight(context: ScheduleEvaluationContext, job_name: str) -> set[str]:
    """Partition keys of queued or running runs that write a LAION part: this job's runs, and any other run
    (``dagster asset materialize``, a UI launch) whose asset selection includes a part asset."""
    runs = context.instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT))
    part_assets = set(LAION_PART_ASSETS)
    return {
        r.tags["dagster/partition"]
        for r in runs
        if "dagster/partition" in r.tags
        and (r.job_name == job_name or bool(part_assets & set(r.asset_selection or ())))
    }


def committed_parts(storage: StorageResource, parts: list[str]) -> set[str]:
    """Parts whose download and detections are both committed (their manifests exist)."""
    lake = storage.get()
    return {
        p
        for p in parts
        if artifacts.images(lake, p).manifest() is not None
        and artifacts.detections(lake, p).manifest() is not None
    }


def laion_schedule(settings: FacelakeSettings) -> ScheduleDefinition:
    """Schedule over the configured subset (20M or 50M), at most ``max_in_flight`` parts at once."""
    parts = settings.schedule_parts()
    limit = settings.schedule.max_in_flight

    @schedule(
        name=f"laion_face_{settings.schedule.subset}_schedule",
        job=laion_face_part_job,
        cron_schedule=settings.schedule.cron,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Requests LAION-Face {settings.schedule.subset} parts that are not committed and not in "
        f"flight, at most {limit} in flight.",
    )
    def _schedule(context: ScheduleEvaluationContext, storage: StorageResource):
        in_flight = parts_in_flight(context, laion_face_part_job.name)
        todo = plan_part_requests(parts, committed_parts(storage, parts), in_flight, limit)
        if not todo:
            return SkipReason(f"{len(in_flight)} part(s) in flight (limit {limit}); nothing else to request")
        # Dagster requires a run_key on each of several RunRequests (it de-duplicates within the tick).
        return [
            RunRequest(run_key=p, partition_key=p, tags={"facelake/requested_by": "schedule"}) for p in todo
        ]

    return _schedule
