"""Celery for real: two dagster-celery workers (queues ``cpu`` and ``gpu``) run a LAION-Face part and its faces.

The workers are subprocesses started as docker-compose starts them, ``dagster-celery worker start -A
dagster_celery.app -y deploy/celery.yaml -q cpu`` (and ``gpu``), each in its own process group that the
fixture kills. Broker and result backend are a Redis database the test claims (conftest's
``redis_database``), and each worker must say so itself: its stats over that broker and its startup banner
name the Redis URL (a worker on dagster-celery's amqp default never answers there). ``dagster job execute``
runs ``laion_face_part_job`` and then ``laion_face_faces_job`` for part 00000 with ``FACELAKE_EXECUTOR=celery``
on a DAGSTER_HOME whose storage is a fresh Postgres database. The event log must show every step submitted to
the queue its ``dagster-celery/queue`` tag names and run (STEP_START pid) in a pool process of that queue's
worker. The per-sample tables the runs commit must equal, sorted by key, those of a multiprocess run of the
same jobs on the same world into another lake. A run that does not finish by its deadline fails naming the
steps still waiting and their queues (a step without a queue tag waits on ``dagster``, which no worker here
consumes).

The fast tests check that every executable asset and check op carries a queue tag the workers consume, that
``deploy/celery.yaml`` is the executor's config, and that docker-compose's workers start with that file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from celery import Celery
from dagster import DagsterInstance

from dagster_project.executors import (
    CELERY_BROKER_ENV,
    CELERY_CONFIG,
    CELERY_CONFIG_ENV,
    CELERY_QUEUES,
    celery_config,
    executor_from_env,
    load_celery_yaml,
)
from facelake.laion import artifacts
from facelake.lake.shard_stage import read_stage_table
from facelake.lake.storage import Storage
from facelake.settings import load_settings
from synthetic.world import LaionWorld, WorldSpec, write_config
from tests.celery_helpers import (
    CELERY_YAML,
    Worker,
    banner_url,
    celery_app,
    execute_job_on_celery,
    iter_step_queues,
    job_execute_command,
    queue_tag_problems,
    start_worker,
    step_traces,
    wait_until_ready,
)
from tests.cli_helpers import (
    BIN_DIR,
    IN_PROCESS,
    INPUTS,
    PART,
    REPO_ROOT,
    cli_env,
    make_dagster_home,
    materialize,
    run_cli,
    served_world,
    world_definitions,
)
from tests.test_postgres_instance import PG_URL_ENV, sqlalchemy_url

JOBS = ("laion_face_part_job", "laion_face_faces_job")
CELERY_WORLD = WorldSpec(rows=60, face_rows=40)
"""A quarter of the default world: 33 kept face rows, 4 image shards of 10."""
SHARD_SIZE = 10
JOB_TIMEOUT_S = 240
"""Deadline of each celery run; a run stuck on a queue no worker consumes fails here, naming its steps."""
MULTIPROCESS_TIMEOUT_S = 240
COMPOSE_CELERY_YAML = "/opt/facelake/deploy/celery.yaml"

TABLE_KEYS = {
    "samples": ["sample_id"],
    "detected": ["sample_id", "face_index"],
    "embeddings": ["sample_id", "face_index"],
}
"""The per-sample tables a part's runs commit, and the key each is compared sorted by."""
VARYING_COLUMNS: dict[str, set[str]] = {"samples": set(), "detected": set(), "embeddings": set()}
"""Columns allowed to differ between two runs of the same input (none: the tables hold no timings or paths)."""


# --- fast: the config the executor, the workers and docker-compose share ---------------------------------


def test_every_executable_step_has_a_queue_tag():
    from dagster_project.definitions import defs

    problems = queue_tag_problems(defs, CELERY_QUEUES)
    assert not problems, (
        f"ops without a dagster-celery/queue tag in {CELERY_QUEUES}: under the celery executor they wait on "
        "queue 'dagster', which no worker consumes:\n  " + "\n  ".join(problems)
    )


def test_deploy_celery_yaml_is_the_executors_config():
    assert load_celery_yaml(CELERY_YAML) == CELERY_CONFIG


def test_the_celery_executor_needs_its_broker(monkeypatch):
    monkeypatch.setenv("FACELAKE_EXECUTOR", "celery")
    monkeypatch.delenv(CELERY_CONFIG_ENV, raising=False)
    monkeypatch.delenv(CELERY_BROKER_ENV, raising=False)
    with pytest.raises(ValueError, match=CELERY_BROKER_ENV):
        executor_from_env()
    monkeypatch.setenv(CELERY_BROKER_ENV, "redis://127.0.0.1:6379/0")
    assert executor_from_env().name == "facelake_celery"
    monkeypatch.setenv(CELERY_CONFIG_ENV, str(CELERY_YAML))
    assert celery_config() == CELERY_CONFIG


def test_the_celery_executor_refuses_a_config_without_broker(monkeypatch, tmp_path):
    config = tmp_path / "celery.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": {"backend": "redis://127.0.0.1:6379/0"}}}))
    monkeypatch.setenv(CELERY_CONFIG_ENV, str(config))
    with pytest.raises(ValueError, match="no celery broker"):
        celery_config()


def test_compose_workers_start_with_the_deploy_celery_yaml():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    brokers = {services[name]["environment"][CELERY_BROKER_ENV] for name in ("webserver", "daemon")}
    for queue in CELERY_QUEUES:
        worker = services[f"worker-{queue}"]
        assert worker["command"].split() == [
            *("dagster-celery", "worker", "start", "-A", "dagster_celery.app"),
            *("-y", COMPOSE_CELERY_YAML, "-q", queue),
        ]
        assert f"./deploy/celery.yaml:{COMPOSE_CELERY_YAML}:ro" in worker["volumes"]
        assert worker["environment"]["FACELAKE_EXECUTOR"] == "celery"
        brokers.add(worker["environment"][CELERY_BROKER_ENV])
    assert len(brokers) == 1 and brokers.pop().startswith("redis://"), "one Redis broker for all services"


# --- slow: real workers, a Postgres instance, Redis ---------------------------------------------------------


@dataclass
class CeleryDeployment:
    """The world, the Postgres-backed DAGSTER_HOME, the CLI environment and the two ready workers."""

    world: LaionWorld
    home: Path
    env: dict[str, str]
    broker: str
    workers: dict[str, Worker]
    app: Celery


@pytest.fixture
def celery_deployment(tmp_path, monkeypatch, redis_database, postgres_database) -> Iterator[CeleryDeployment]:
    with served_world(tmp_path / "world", CELERY_WORLD) as world:
        write_config(world, CELERY_WORLD, number_sample_per_shard=SHARD_SIZE)
        monkeypatch.setenv(CELERY_BROKER_ENV, redis_database)  # this process reads deploy/celery.yaml too
        monkeypatch.setenv(PG_URL_ENV, sqlalchemy_url(postgres_database))
        home = make_dagster_home(tmp_path / "dagster_home", "dagster.yaml")
        # the instance's tables, created here before two workers race to create them
        with DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        env = cli_env(
            home,
            FACELAKE_EXECUTOR="celery",
            FACELAKE_CELERY_CONFIG=str(CELERY_YAML),
            FACELAKE_MODELS__CACHE_DIR=str(tmp_path / "models"),
            PATH=f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}",  # dagster-celery starts `celery` from PATH
            PYTHONUNBUFFERED="1",
        )
        token = uuid.uuid4().hex[:8]
        workers: dict[str, Worker] = {}
        app = celery_app()
        try:
            for queue in CELERY_QUEUES:
                log = tmp_path / f"worker-{queue}.log"
                workers[queue] = start_worker(queue, f"{queue}-{token}", env, log)
            for worker in workers.values():
                wait_until_ready(app, worker)
            yield CeleryDeployment(world, home, env, redis_database, workers, app)
        finally:
            for worker in workers.values():
                worker.stop()
            app.close()


def assert_listens_on_redis(worker: Worker, broker: str) -> None:
    """The worker's own account of its broker (stats, banner) is the claimed Redis database, and its queue."""
    url = urlsplit(broker)
    info = worker.stats["broker"]
    assert info["transport"] == "redis", f"{worker.nodename} uses {info['transport']}: {info}"
    assert (info["hostname"], info["port"], str(info["virtual_host"])) == (
        url.hostname,
        url.port,
        url.path[1:],
    )
    for field in ("transport", "results"):  # the banner masks the (empty) password: redis://:**@127...
        banner = urlsplit(banner_url(worker, field) or "")
        assert (banner.scheme, banner.hostname, banner.port, banner.path) == (
            url.scheme,
            url.hostname,
            url.port,
            url.path,
        ), f"{worker.nodename} {field}: {banner.geturl()}\n{worker.log_tail()}"
    assert worker.active_queues == [worker.queue]


def assert_steps_ran_on_their_queues_workers(
    instance: DagsterInstance, job: str, run_id: str, workers: dict[str, Worker]
) -> dict[str, str]:
    """Each step of the run went to the queue its tag names and ran in that queue's worker; step -> queue."""
    expected = dict(iter_step_queues(world_definitions(), job))
    traces = step_traces(instance, run_id)
    assert set(traces) == set(expected), f"{job}: steps in the event log {sorted(traces)}"
    for step, queue in expected.items():
        trace = traces[step]
        assert queue in workers, f"{job}: step {step} has dagster-celery/queue={queue!r}"
        worker = workers[queue]
        assert trace.outcome == "STEP_SUCCESS", f"{step}: {trace}"
        assert trace.queues == {queue}, f"{step} was submitted to {trace.queues}, its tag says {queue}"
        assert trace.workers == {worker.nodename}, f"{step} ({queue}) ran on {trace.workers}"
        assert trace.start_pids and trace.start_pids <= worker.pool_pids(), (
            f"{step} started in pids {trace.start_pids}, not in {worker.nodename}'s pool {worker.pool_pids()}"
        )
    return expected


def part_tables(lake: Storage) -> dict[str, pa.Table]:
    """The per-sample tables of part 00000: the download's samples.parquet, our detections and embeddings."""
    with lake.open(artifacts.committed_file(artifacts.images(lake, PART), "samples.parquet"), "rb") as f:
        samples = pq.read_table(f)
    return {
        "samples": samples,
        "detected": read_stage_table(lake, artifacts.detected(lake, PART)),
        "embeddings": read_stage_table(lake, artifacts.embeddings(lake, PART)),
    }


def comparable(name: str, table: pa.Table) -> pa.Table:
    keys = TABLE_KEYS[name]
    table = table.drop_columns(sorted(VARYING_COLUMNS[name] & set(table.column_names)))
    return table.sort_by([(key, "ascending") for key in keys])


def first_difference(left: pa.Table, right: pa.Table) -> str:
    if left.schema != right.schema or left.num_rows != right.num_rows:
        return f"schemas/rows differ:\n{left.schema} ({left.num_rows})\n{right.schema} ({right.num_rows})"
    for column in left.column_names:
        a, b = left[column].to_pylist(), right[column].to_pylist()
        for row, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return f"column {column}, row {row}: {x!r} != {y!r}"
    return "equal"


def multiprocess_lake(world: LaionWorld, base: Path, models: Path) -> Storage:
    """The same inputs and jobs on the same world, multiprocess executor and SQLite, into a lake of its own."""
    config = yaml.safe_load(world.config_path.read_text())
    config["root"] = str(base / "lake")
    base.mkdir(parents=True)
    config_path = base / "facelake.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    home = make_dagster_home(base / "dagster_home")
    env = cli_env(home, FACELAKE_CONFIG=str(config_path), FACELAKE_MODELS__CACHE_DIR=str(models))
    env["FACELAKE_EXECUTOR"] = "multiprocess"
    materialize(INPUTS, {**env, **IN_PROCESS})
    for job in JOBS:
        run_cli(job_execute_command(job, PART), env, MULTIPROCESS_TIMEOUT_S).assert_ok()
    return Storage(config["root"])


@pytest.mark.slow
@pytest.mark.services
def test_celery_workers_run_each_step_on_its_queue_like_multiprocess(celery_deployment, tmp_path):
    deployment = celery_deployment
    for worker in deployment.workers.values():
        assert_listens_on_redis(worker, deployment.broker)
    materialize(INPUTS, {**deployment.env, **IN_PROCESS})
    queues_used: set[str] = set()
    for job in JOBS:
        run = execute_job_on_celery(
            job,
            PART,
            deployment.env,
            deployment.home,
            tmp_path / f"{job}.log",
            list(deployment.workers.values()),
            JOB_TIMEOUT_S,
        )
        with DagsterInstance.from_config(str(deployment.home)) as instance:
            step_queues = assert_steps_ran_on_their_queues_workers(
                instance, job, run.run_id, deployment.workers
            )
        queues_used |= set(step_queues.values())
    assert queues_used == set(CELERY_QUEUES), "both workers ran steps"

    celery_tables = part_tables(load_settings().storage())
    reference = part_tables(
        multiprocess_lake(deployment.world, tmp_path / "multiprocess", tmp_path / "models")
    )
    for name, keys in TABLE_KEYS.items():
        ours, theirs = comparable(name, celery_tables[name]), comparable(name, reference[name])
        assert ours.num_rows > 0, f"{name}: empty"
        assert ours.equals(theirs), (
            f"{name} (by {keys}) differs from the multiprocess run's: " + first_difference(ours, theirs)
        )
