"""Operating the deployment (issue 16, points 1-3): faults under celery, daemon-driven automation, a
deployment that starts.

Fast tests check the shipped files against each other: docker-compose.yml's services run exactly
deploy/local_topology.py's commands with its environment, instance and workspace; the deployment instance is
deploy/dagster.yaml plus compute logs in the object store; the run limits name the run tags the jobs, the
schedule and the faces automation put on their runs; the faces automation can be turned off; the celery
executor's watch names the step and the worker when a worker is lost.

Slow tests share ONE started topology (tests/topology.py: code server, webserver, daemon, a cpu and a gpu
worker on Postgres, a redis-server of its own and moto S3) and run in file order, each on the state the
previous ones left:

1. the script's own path: the inputs and part 00000 launched through the webserver's GraphQL API;
2. part 00000's detections and embeddings follow its images by declarative automation, in a GPU-tagged run;
3. the gpu worker's main process is SIGKILLed mid-step: the run fails within LOST + PING + 15 s naming the
   step and the worker; after the worker restarts (compose: ``restart: unless-stopped``) the automatic
   retry (deploy/dagster.yaml ``run_retries``) completes;
4. Redis is restarted (emptied), then a backfill of three parts is launched as the UI does
   (``launchPartitionBackfill``): its runs are created, tagged, and work;
5. two schedule ticks through the daemon's scheduler code path while they are in flight: the first
   launches the next uncommitted part and skips committed and in-flight ones, the second skips;
6. a backfill run's pool process is SIGKILLed mid-download: the run fails naming the step and the worker,
   and its automatic retry completes;
7. every run of the backfill, the retries and the automation runs ran within the run limits (from their
   start and end times) and succeeded in the end;
8. nothing lost or duplicated: every part's partitions hold exactly what their manifests list, with unique
   keys and the expected rows.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterRunStatus
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config_schema

from dagster_project.executors import (
    CELERY_CONFIG,
    CeleryStepFailed,
    CeleryWorkerLost,
    WatchedResult,
    WorkerWatch,
)
from facelake.laion import artifacts
from facelake.lake.shard_stage import read_stage_table
from tests.cli_helpers import REPO_ROOT, expected_download_counts, world_definitions
from tests.topology import (
    EXTRA_PARTS,
    LOST_WORKER_S,
    PING_S,
    Deployment,
    deployment_fixture,  # noqa: F401  (the module's topology, as fixture ``deployment``)
    failure_text,
    intervals,
    load_script,
    max_overlap,
    run_records,
    step_outcomes,
    step_start,
    step_workers,
    unlisted_files,
    wait_for,
    wait_run_finished,
)

PART = "00000"
RESOURCE_TAG = "facelake/resource"
FACE_ASSETS = {AssetKey("laion_face_detected"), AssetKey("laion_face_embeddings")}
RUN_S = 420
"""Deadline of one run (or a retry) on the loaded 2-core machine."""
LOST_BOUND_S = LOST_WORKER_S + PING_S + 15
"""A run whose worker's main process is killed fails within this (production: 60 + 10 + 15 s)."""
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
FACELAKE_SERVICES = ("codeserver", "webserver", "daemon", "worker-cpu", "worker-gpu")

script = load_script()


# --- fast: the shipped files agree ------------------------------------------------------------------------


def test_compose_services_run_the_scripts_commands():
    services = COMPOSE["services"]
    assert set(script.SERVICES) == set(FACELAKE_SERVICES)
    for name in FACELAKE_SERVICES:
        compose_command = services[name]["command"].split()
        assert compose_command == script.service_command(name, script.COMPOSE_VALUES), name
        local = script.service_command(
            name, script.COMPOSE_VALUES, "w" if name.startswith("worker") else None
        )
        extra = local[len(compose_command) :]
        assert local[: len(compose_command)] == compose_command
        assert extra == (
            script.LOCAL_WORKER_OPTIONS.format(name="w").split() if name.startswith("worker") else []
        )


def test_compose_services_get_the_scripts_environment_instance_and_workspace():
    services = COMPOSE["services"]
    values = script.COMPOSE_VALUES
    for name in FACELAKE_SERVICES:
        service = services[name]
        assert tuple(service["environment"]) == script.ENV_KEYS, name
        home = service["environment"]["DAGSTER_HOME"]
        assert f"./deploy/dagster.deployment.yaml:{home}/dagster.yaml:ro" in service["volumes"], name
        models = service["environment"]["FACELAKE_MODELS__CACHE_DIR"]
        assert f"models:{models}" in service["volumes"], f"{name}: the shared model cache"
        assert service["restart"] == "unless-stopped"
    env = services["daemon"]["environment"]
    expected = script.deployment_env(
        home=env["DAGSTER_HOME"],
        postgres_url="postgresql+psycopg2://dagster:dagster@postgres:5432/dagster",
        broker="redis://redis:6379/0",
        s3_endpoint="http://minio:9000",
        sources=f"s3://{script.BUCKET}/sources",
        models="/models",
    )
    assert env == expected
    workspace = yaml.safe_load((REPO_ROOT / "deploy" / "workspace.yaml").read_text())
    assert workspace == script.workspace("codeserver", int(values["code_port"]))
    assert values["workspace"] == "/opt/facelake/deploy/workspace.yaml"  # the image's copy of deploy/


def test_compose_infrastructure_starts_healthy_with_its_bucket():
    services = COMPOSE["services"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("postgres", "redis", "minio", "codeserver", "webserver"):
        assert services[name]["healthcheck"]["test"], name
    bucket_init = services["createbuckets"]["entrypoint"]
    assert f"mc mb --ignore-existing lake/{script.BUCKET}" in bucket_init
    assert "http://minio:9000" in bucket_init
    for name in FACELAKE_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"] == {"condition": "service_healthy"}
        assert depends["redis"] == {"condition": "service_healthy"}
        assert depends["createbuckets"] == {"condition": "service_completed_successfully"}
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["codeserver"] == {"condition": "service_healthy"}
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    env = services["worker-gpu"]["environment"]
    assert env["FACELAKE_COMPUTE_LOGS_BUCKET"] == script.BUCKET
    assert env["FACELAKE_S3__ENDPOINT_URL"] == "http://minio:9000"  # MinIO's port inside the network
    assert set(COMPOSE["volumes"]) == {"pgdata", "redisdata", "miniodata", "models"}


def test_the_image_pins_torch_and_carries_the_system_libraries():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in dockerfile and f'"{pin}"' in pyproject
    assert "libgl1" in dockerfile and "libglib2.0-0" in dockerfile
    assert "dagster-aws==0.29.27" in dockerfile
    assert "COPY deploy deploy" in dockerfile


def test_the_deployment_instance_is_deploy_dagster_yaml_plus_compute_logs_in_s3(monkeypatch):
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    base = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    deployment_yaml = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.deployment.yaml").read_text())
    logs = deployment_yaml.pop("compute_logs")
    assert deployment_yaml == base
    assert logs["module"] == "dagster_aws.s3.compute_log_manager"
    assert logs["config"]["bucket"] == {"env": "FACELAKE_COMPUTE_LOGS_BUCKET"}
    assert logs["config"]["endpoint_url"] == {"env": "FACELAKE_S3__ENDPOINT_URL"}
    for name in ("FACELAKE_DAGSTER_PG_URL", "FACELAKE_COMPUTE_LOGS_BUCKET", "FACELAKE_S3__ENDPOINT_URL"):
        monkeypatch.setenv(name, "x")
    assert process_config(S3ComputeLogManager.config_type(), logs["config"]).success
    schema = dagster_instance_config_schema()
    for config in (base, {**deployment_yaml, "compute_logs": logs}):
        result = process_config(schema, config)
        assert result.success, result.errors


def test_the_run_limits_count_the_run_tags_jobs_schedules_and_automation_carry(laion_world):
    instance = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    limits = {
        (limit["value"] if isinstance(limit["value"], str) else None): limit["limit"]
        for limit in instance["concurrency"]["runs"]["tag_concurrency_limits"]
        if limit["key"] == RESOURCE_TAG
    }
    assert limits == {"download": 2, "gpu": 1}
    assert instance["run_monitoring"]["enabled"] and instance["run_monitoring"]["max_runtime_seconds"] > 0
    assert instance["run_retries"] == {
        "enabled": True,
        "max_retries": 1,
        "retry_on_asset_or_op_failure": True,
    }
    defs = world_definitions()
    assert defs.resolve_job_def("laion_face_part_job").run_tags[RESOURCE_TAG] == "download"
    assert defs.resolve_job_def("laion_face_faces_job").run_tags[RESOURCE_TAG] == "gpu"
    (sensor,) = [s for s in defs.sensors if s.name == "laion_face_models_automation"]
    assert sensor.run_tags == {RESOURCE_TAG: "gpu"}
    assert sensor.default_status.value == "RUNNING"
    graph = defs.resolve_asset_graph()
    for key in FACE_ASSETS:
        assert graph.get(key).automation_condition is not None, key
        assert graph.get(key).assets_def.op.pool == "gpu"


def test_the_faces_automation_can_be_turned_off(laion_world):
    from dagster_project.definitions import build_definitions
    from facelake.settings import load_settings

    settings = load_settings()
    settings.schedule = settings.schedule.model_copy(update={"faces_follow_images": False})
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    assert all(graph.get(key).automation_condition is None for key in FACE_ASSETS)
    assert not [s for s in defs.sensors or [] if s.name == "laion_face_models_automation"]


def test_the_celery_executor_config_lets_the_watch_see_who_runs_a_step():
    source = CELERY_CONFIG["config_source"]
    assert source["task_track_started"] is True
    assert source["worker_disable_prefetch"] is True
    assert source["worker_redirect_stdouts"] is False


class FakeBackend:
    def __init__(self, meta: dict) -> None:
        self.meta = meta

    def get_task_meta(self, task_id: str) -> dict:
        return self.meta


class FakeResult:
    id = "task-1"

    def __init__(self, meta: dict, error: Exception | None = None) -> None:
        self.backend = FakeBackend(meta)
        self.error = error

    def get(self):
        if self.error:
            raise self.error
        return ["events"]


class FakeInspect:
    def __init__(self, app: FakeApp, destination: list[str]) -> None:
        self.app, self.worker = app, destination[0]

    def query_task(self, task_id: str):
        self.app.asks += 1
        if self.app.answer is None:  # no reply: the worker is gone
            return None
        return {self.worker: {task_id: ["active", {}]} if self.app.answer else {}}


class FakeApp:
    def __init__(self) -> None:
        self.answer: bool | None = True
        self.asks = 0
        self.control = self

    def inspect(self, destination, timeout):
        return FakeInspect(self, destination)


STARTED_ON_GPU = {"status": "STARTED", "result": {"hostname": "gpu-1@box", "pid": 4242}}


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr("dagster_project.executors.time.monotonic", lambda: now[0])
    return now


def test_a_step_whose_worker_stops_answering_fails_naming_the_step_and_the_worker(clock):
    app = FakeApp()
    result = WatchedResult(FakeResult(STARTED_ON_GPU), "laion_face_detected", WorkerWatch(app, 60, 10))
    assert not result.ready()
    clock[0] += 55
    app.answer = None
    assert not result.ready()  # 55 s without an answer: not yet lost
    clock[0] += 6
    assert result.ready()  # 61 s since the last answer (not asked again: the last question was 6 s ago)
    with pytest.raises(CeleryWorkerLost) as lost:
        result.get()
    assert str(lost.value).startswith(
        'step "laion_face_detected" was running on celery worker gpu-1@box (pool pid 4242), which has not '
        "answered for 60 s"
    )
    assert app.asks == 2  # at most one question per 10 s


def test_a_step_whose_worker_restarted_under_the_same_name_fails_naming_both(clock):
    app = FakeApp()
    result = WatchedResult(FakeResult(STARTED_ON_GPU), "laion_face_detected", WorkerWatch(app, 60, 10))
    assert not result.ready()
    app.answer = False  # the restarted worker answers but never heard of the task
    clock[0] += 10
    assert not result.ready()  # once could be the instant the task finished
    clock[0] += 10
    assert result.ready()
    with pytest.raises(CeleryWorkerLost, match="no longer knows the task: it restarted"):
        result.get()


def test_a_step_whose_pool_process_died_fails_naming_the_worker():
    result = WatchedResult(
        FakeResult({"status": "STARTED", "result": {"hostname": "cpu-1@box", "pid": 77}}),
        "laion_face_images",
        WorkerWatch(FakeApp(), lost_after_s=60, ping_every_s=10),
    )
    assert not result.ready()
    result.result = FakeResult(
        {"status": "FAILURE", "result": None}, RuntimeError("Worker exited prematurely: signal 9 (SIGKILL)")
    )
    assert result.ready()
    with pytest.raises(CeleryStepFailed) as failure:
        result.get()
    assert str(failure.value) == (
        'step "laion_face_images" failed on celery worker cpu-1@box (pool pid 77): '
        "RuntimeError: Worker exited prematurely: signal 9 (SIGKILL)"
    )


# --- slow: the started topology, in file order -------------------------------------------------------------

STATE: dict[str, object] = {}
"""What earlier slow tests leave for later ones (run ids, kill times)."""


def tags_of(deployment: Deployment, run_id: str) -> dict[str, str]:
    return dict(deployment.instance.get_run_by_id(run_id).tags)


def expected_nodes(deployment: Deployment, job: str) -> dict[str, str]:
    """Step key -> the celery node its dagster-celery/queue tag sends it to."""
    from tests.celery_helpers import iter_step_queues

    return {
        step: deployment.topology.worker_nodename(f"worker-{queue}")
        for step, queue in iter_step_queues(world_definitions(), job)
    }


CAPTURED_LOGS = """
query Logs($runId: ID!, $fileKey: String!) {
  runOrError(runId: $runId) { ... on Run { capturedLogs(fileKey: $fileKey) { stdout stderr } } }
}
"""


def captured_logs(deployment: Deployment, run_id: str) -> dict[str, tuple[str, str]]:
    """Step key -> (S3 object key of its stderr, the stderr the webserver serves), per LOGS_CAPTURED event."""
    import boto3
    from dagster import DagsterEventType

    env = deployment.topology.env
    s3 = boto3.client("s3", endpoint_url=env["FACELAKE_S3__ENDPOINT_URL"])
    bucket = env["FACELAKE_COMPUTE_LOGS_BUCKET"]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"compute-logs/storage/{run_id}/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    logs = {}
    for entry in deployment.instance.all_logs(run_id, of_type=DagsterEventType.LOGS_CAPTURED):
        data = entry.dagster_event.logs_captured_data
        served = deployment.graphql(CAPTURED_LOGS, runId=run_id, fileKey=data.file_key)["runOrError"]
        stored = [key for key in keys if f"/{data.file_key}." in key and key.endswith(".err")]
        for step in data.step_keys or []:
            logs[step] = (stored[0] if stored else "", served["capturedLogs"]["stderr"] or "")
    return logs


@pytest.mark.slow
@pytest.mark.services
def test_1_the_script_materializes_part_00000_through_graphql(deployment):
    runs = deployment.topology.materialize_part(PART)
    assert {job: run["status"] for job, run in runs.items()} == {
        "laion_face_inputs_job": "SUCCESS",
        "laion_face_part_job": "SUCCESS",
    }
    part_run = runs["laion_face_part_job"]["runId"]
    STATE["part_run"] = part_run
    tags = tags_of(deployment, part_run)
    assert (tags["dagster/partition"], tags[RESOURCE_TAG]) == (PART, "download")
    for job, run in runs.items():
        expected = expected_nodes(deployment, job)
        workers = step_workers(deployment.instance, run["runId"])
        assert workers == {step: {node} for step, node in expected.items()}, job
    lake = deployment.lake
    for artifact in (
        artifacts.meta(lake, PART),
        artifacts.images(lake, PART),
        artifacts.detections(lake, PART),
    ):
        assert artifact.prefix.startswith("s3://facelake/lake/")
        assert unlisted_files(artifact) == [], artifact.prefix
    images = artifacts.images(lake, PART)
    with lake.open(artifacts.committed_file(images, "samples.parquet"), "rb") as handle:
        samples = pq.read_table(handle)
    statuses = samples.column("status").to_pylist()
    counts = {status: statuses.count(status) for status in set(statuses)}
    assert counts == expected_download_counts(deployment.topology.world.laion)
    logs = captured_logs(deployment, part_run)  # written by the workers to S3, served by the webserver
    for step in ("laion_face_meta", "laion_face_images", "laion_face_detections"):
        stored, served = logs[step]
        assert stored.startswith(f"compute-logs/storage/{part_run}/"), (step, stored)
        assert f'Started execution of step "{step}"' in served, (step, served[-2000:])


@pytest.mark.slow
@pytest.mark.services
def test_2_part_faces_follow_its_images_by_automation(deployment):
    instance = deployment.instance
    images = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("laion_face_images"), asset_partitions=[PART]), limit=1
    ).records[0]
    assert images.run_id == STATE["part_run"]

    def automation_run():
        for record in run_records(instance, **{"dagster/partition": PART}):
            if set(record.dagster_run.asset_selection or ()) == FACE_ASSETS:
                return record
        return None

    record = wait_for(automation_run, 90, "the automation to request part 00000's detections and embeddings")
    run = record.dagster_run
    # requested once the images were materialized (which may be before the part run itself has ended)
    assert record.create_timestamp.timestamp() >= images.timestamp
    assert run.tags[RESOURCE_TAG] == "gpu"
    assert run.tags.get("dagster/sensor_name") == "laion_face_models_automation"
    STATE["faces_run"] = run.run_id


def process_state(pid: int) -> str | None:
    """The process's state letter from /proc (None when it is gone; 'Z' for a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z", "X")


def retry_of(deployment: Deployment, run_id: str):
    records = run_records(deployment.instance, **{"dagster/parent_run_id": run_id})
    return records[0].dagster_run if records else None


@pytest.mark.slow
@pytest.mark.services
def test_3_killing_the_gpu_workers_main_process_fails_the_step_in_bounded_time(deployment):
    instance, topology = deployment.instance, deployment.topology
    run_id = STATE["faces_run"]
    step = "laion_face_detected"
    start = wait_for(lambda: step_start(instance, run_id, step), RUN_S, f"{step} to start in {run_id}")
    pool_pid = start.pid
    main_pid = parent_pid(pool_pid)
    main_cmdline = Path(f"/proc/{main_pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "celery" in main_cmdline and "worker" in main_cmdline, main_cmdline
    os.kill(main_pid, signal.SIGKILL)
    killed_at = time.time()
    wait_for(lambda: gone(pool_pid), 30, f"the pool process {pool_pid} to die with its main process")
    # compose restarts the container under the same name: the watch must not take it for the old one
    topology.restart_service("worker-gpu")
    run = wait_run_finished(deployment, run_id, LOST_BOUND_S + 60)
    took = instance.get_run_record_by_id(run_id).end_time - killed_at
    assert run.status == DagsterRunStatus.FAILURE
    assert took <= LOST_BOUND_S, f"the run failed {took:.0f} s after the kill (bound {LOST_BOUND_S:.0f} s)"
    text = failure_text(instance, run_id)
    node = topology.worker_nodename("worker-gpu")
    assert f'step "{step}" was running on celery worker {node} (pool pid {pool_pid}), which ' in text, text
    reasons = ("no longer knows the task: it restarted", f"has not answered for {LOST_WORKER_S:.0f} s")
    assert any(reason in text for reason in reasons), text
    assert step_outcomes(instance, run_id).get(step) != "STEP_SUCCESS"

    retry = wait_for(lambda: retry_of(deployment, run_id), 120, f"the automatic retry of {run_id}")
    assert retry.tags[RESOURCE_TAG] == "gpu" and retry.tags["dagster/retry_number"] == "1"
    assert wait_run_finished(deployment, retry.run_id, RUN_S).status == DagsterRunStatus.SUCCESS
    assert_faces_committed(deployment, PART)


def assert_faces_committed(deployment: Deployment, part: str) -> None:
    """Detections and embeddings committed with nothing unlisted, unique keys, one embedding per face."""
    lake = deployment.lake
    detected_artifact, embeddings_artifact = artifacts.detected(lake, part), artifacts.embeddings(lake, part)
    for artifact in (detected_artifact, embeddings_artifact):
        assert unlisted_files(artifact) == [], artifact.prefix
    detected = read_stage_table(lake, detected_artifact)
    embeddings = read_stage_table(lake, embeddings_artifact)
    keys = list(zip(detected["sample_id"].to_pylist(), detected["face_index"].to_pylist(), strict=True))
    assert detected.num_rows > 0 and len(set(keys)) == len(keys), f"{part}: duplicate detections"
    embedded = list(
        zip(embeddings["sample_id"].to_pylist(), embeddings["face_index"].to_pylist(), strict=True)
    )
    assert sorted(embedded) == sorted(keys), f"{part}: embeddings do not match the detections one to one"


SCHEDULE_NAME = "laion_face_20m_schedule"


def tick(deployment: Deployment, at: datetime.datetime):
    """One evaluation of the running schedule through the daemon's scheduler code path, as of ``at``."""
    from dagster._core.scheduler.instigation import TickStatus
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._scheduler.scheduler import launch_scheduled_runs

    instance = deployment.instance
    target = WorkspaceFileTarget([str(deployment.topology.home / "workspace.yaml")])
    with WorkspaceProcessContext(instance, target) as context:
        list(
            launch_scheduled_runs(context, logging.getLogger("tick"), end_datetime_utc=at, iteration_times={})
        )
        schedule = next(
            s
            for location in context.create_request_context().get_code_location_entries().values()
            for repo in location.code_location.get_repositories().values()
            for s in repo.get_schedules()
            if s.name == SCHEDULE_NAME
        )
    (latest,) = instance.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id, limit=1)
    assert latest.status in (TickStatus.SUCCESS, TickStatus.SKIPPED), latest
    return latest


START_SCHEDULE = """
mutation Start($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}
"""

TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on PythonError { message } ... on TerminateRunFailure { message } }
}
"""


@pytest.mark.slow
@pytest.mark.services
def test_4_after_a_redis_restart_a_backfill_launched_like_the_ui_creates_tagged_runs(deployment):
    instance, topology = deployment.instance, deployment.topology
    topology.redis.restart()  # empty: every queue, binding and result is gone
    STATE["redis_restarted_at"] = time.time()
    backfill_id = deployment.graphql.launch_backfill("laion_face_part_job", EXTRA_PARTS)
    STATE["backfill"] = backfill_id

    def backfill_runs():
        records = run_records(instance, **{"dagster/backfill": backfill_id})
        return records if len(records) == len(EXTRA_PARTS) else None

    records = wait_for(backfill_runs, 120, f"backfill {backfill_id} to create its runs")
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == sorted(EXTRA_PARTS)
    for record in records:
        assert record.dagster_run.tags[RESOURCE_TAG] == "download"
        assert record.dagster_run.job_name == "laion_face_part_job"


@pytest.mark.slow
@pytest.mark.services
def test_5_schedule_ticks_launch_uncommitted_parts_and_skip_committed_and_in_flight(deployment):
    instance, graphql = deployment.instance, deployment.graphql
    started = graphql(
        START_SCHEDULE,
        selector={
            "repositoryLocationName": script.LOCATION,
            "repositoryName": script.REPOSITORY,
            "scheduleName": SCHEDULE_NAME,
        },
    )["startSchedule"]
    assert started["__typename"] == "ScheduleStateResult" and started["scheduleState"]["status"] == "RUNNING"
    # the schedule's cron is once a year (tests/topology.py): the daemon never ticks it during the test, and
    # the scheduler code path evaluates exactly one tick per call, at the next two cron times
    year = datetime.datetime.now(datetime.UTC).year
    first = tick(deployment, datetime.datetime(year + 1, 1, 1, 0, 0, 1, tzinfo=datetime.UTC))
    requested = [instance.get_run_by_id(run_id) for run_id in first.run_ids]
    parts = [run.tags["dagster/partition"] for run in requested]
    assert parts and parts[0] == "00013", f"{first.status} {parts} {first.skip_reason}"
    assert not {PART, *EXTRA_PARTS} & set(parts), "committed or in-flight parts requested again"
    for run in requested:
        assert run.tags[RESOURCE_TAG] == "download" and run.tags["facelake/requested_by"] == "schedule"
        assert run.status == DagsterRunStatus.QUEUED  # held: two downloads already hold the limit
    second = tick(deployment, datetime.datetime(year + 2, 1, 1, 0, 0, 1, tzinfo=datetime.UTC))
    assert not second.run_ids
    assert second.skip_reason == "4 part(s) in flight (limit 4); nothing else to request"
    for run in requested:  # no sources for 00013 in this world: cancel it while it waits in the queue
        assert graphql(TERMINATE, runId=run.run_id)["terminateRun"]["__typename"] == "TerminateRunSuccess"
        assert wait_run_finished(deployment, run.run_id, 60).status == DagsterRunStatus.CANCELED


@pytest.mark.slow
@pytest.mark.services
def test_6_killing_a_pool_process_mid_download_fails_naming_the_step_and_worker(deployment):
    instance, topology = deployment.instance, deployment.topology
    step = "laion_face_images"
    records = run_records(instance, **{"dagster/backfill": STATE["backfill"]})

    def first_download():
        for record in records:
            event = step_start(instance, record.dagster_run.run_id, step)
            if event is not None:
                return record.dagster_run.run_id, event
        return None

    run_id, event = wait_for(first_download, RUN_S, f"a backfill run to start {step}")
    os.kill(event.pid, signal.SIGKILL)
    run = wait_run_finished(deployment, run_id, RUN_S)
    assert run.status == DagsterRunStatus.FAILURE
    text = failure_text(instance, run_id)
    node = topology.worker_nodename("worker-cpu")
    assert f'step "{step}" failed on celery worker {node} (pool pid {event.pid})' in text, text
    assert "WorkerLostError" in text
    retry = wait_for(lambda: retry_of(deployment, run_id), 120, f"the automatic retry of {run_id}")
    assert retry.tags[RESOURCE_TAG] == "download"
    assert wait_run_finished(deployment, retry.run_id, RUN_S).status == DagsterRunStatus.SUCCESS
    STATE["killed_download"] = run_id


@pytest.mark.slow
@pytest.mark.services
def test_7_backfill_retries_and_automation_ran_within_the_run_limits(deployment):
    instance = deployment.instance
    since = STATE["redis_restarted_at"]

    def all_faces_done():
        done = {}
        for part in EXTRA_PARTS:
            for record in run_records(instance, **{"dagster/partition": part}):
                run = record.dagster_run
                if set(run.asset_selection or ()) == FACE_ASSETS and run.status == DagsterRunStatus.SUCCESS:
                    done[part] = run
        return done if len(done) == len(EXTRA_PARTS) else None

    wait_for(all_faces_done, 3 * RUN_S, "every backfilled part's faces to follow its images")
    records = [r for r in run_records(instance) if r.create_timestamp.timestamp() >= since]
    for record in records:
        if record.dagster_run.status not in (DagsterRunStatus.CANCELED,):
            assert record.dagster_run.is_finished, f"{record.dagster_run.run_id} {record.dagster_run.status}"
    by_resource: dict[str, list] = {"download": [], "gpu": []}
    for record in records:
        resource = record.dagster_run.tags.get(RESOURCE_TAG)
        assert resource in by_resource, f"run {record.dagster_run.run_id} has no {RESOURCE_TAG} tag"
        by_resource[resource].append(record)
    download, gpu = intervals(by_resource["download"]), intervals(by_resource["gpu"])
    assert len(download) == len(EXTRA_PARTS) + 1  # three parts and the killed one's retry
    assert len(gpu) == len(EXTRA_PARTS)
    assert max_overlap(download) <= 2, download
    assert max_overlap(gpu) <= 1, gpu
    failed = {r.dagster_run.run_id for r in records if r.dagster_run.status == DagsterRunStatus.FAILURE}
    assert failed == {STATE["killed_download"]}


@pytest.mark.slow
@pytest.mark.services
def test_8_nothing_lost_or_duplicated_in_any_part(deployment):
    lake = deployment.lake
    world = deployment.topology.world
    for part in (PART, *EXTRA_PARTS):
        for artifact in (
            artifacts.meta(lake, part),
            artifacts.images(lake, part),
            artifacts.detections(lake, part),
        ):
            assert unlisted_files(artifact) == [], artifact.prefix
        images = artifacts.images(lake, part)
        with lake.open(artifacts.committed_file(images, "samples.parquet"), "rb") as handle:
            samples = pq.read_table(handle)
        ids = samples.column("sample_id").to_pylist()
        assert len(ids) == len(set(ids)), f"{part}: a sample downloaded twice"
        if part != PART:
            assert sorted(ids) == sorted(world.extra_parts[part])
            assert set(samples.column("status").to_pylist()) == {"success"}
        assert_faces_committed(deployment, part)
