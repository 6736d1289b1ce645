"""The deployment of docker-compose.yml as local processes, for machines without a Docker engine.

    .venv/bin/python deploy/local_topology.py [--base DIR] [--postgres URL] [--keep-running]

starts, on 127.0.0.1, what docker-compose.yml starts in containers:

    compose service        here
    postgres               a fresh database on the Postgres server at --postgres (default 127.0.0.1:5432)
    redis                  a redis-server of its own on a free port (the machine's Redis is not touched)
    minio + createbuckets  moto's S3 server (MinIO is not on PyPI) and the bucket ``facelake``
    codeserver             dagster code-server start -h 127.0.0.1 -p <port> -m dagster_project
    webserver, daemon      dagster-webserver / dagster-daemon run, loading the code server via a workspace file
    worker-cpu, worker-gpu dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml -q cpu|gpu

with the same commands (``SERVICES``), the same environment variables (``deployment_env``), the same instance
(deploy/dagster.deployment.yaml) and the same workspace shape (deploy/workspace.yaml);
tests/test_operations.py checks docker-compose.yml against them. It writes the offline LAION-Face world
(synthetic.world: real face photos served on 127.0.0.1) and uploads its sources to the bucket, then
materializes the inputs and part 00000 through the webserver's GraphQL API (``launchRun``, as the UI's
Launchpad does), waits for the runs with deadlines, prints where everything is, and stops every process
(``--keep-running``: until Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
BIN_DIR = Path(sys.executable).parent
LOCATION = "facelake"
REPOSITORY = "__repository__"
BUCKET = "facelake"
S3_KEY, S3_SECRET = "facelake", "facelake-secret"
PART = "00000"

SERVICES: dict[str, str] = {
    "codeserver": "dagster code-server start -h {bind} -p {code_port} -m dagster_project --location-name facelake",
    "webserver": "dagster-webserver -h {bind} -p {web_port} -w {workspace}",
    "daemon": "dagster-daemon run -w {workspace}",
    "worker-cpu": "dagster-celery worker start -A dagster_celery.app -y {celery_yaml} -q cpu",
    "worker-gpu": "dagster-celery worker start -A dagster_celery.app -y {celery_yaml} -q gpu",
}
"""Each service's command; docker-compose.yml's are these with the values in ``COMPOSE_VALUES``."""
COMPOSE_VALUES = {
    "bind": "0.0.0.0",
    "code_port": "4000",
    "web_port": "3000",
    "workspace": "/opt/facelake/deploy/workspace.yaml",
    "celery_yaml": "/opt/facelake/deploy/celery.yaml",
}
LOCAL_WORKER_OPTIONS = "-n {name} -- --concurrency=1 --without-gossip --without-mingle"
"""What a local worker adds to the compose command: a node name of its own (all workers share one host here;
in compose each container has its own hostname) and one pool process (the compose workers use one per CPU)."""

ENV_KEYS = (
    "DAGSTER_HOME",
    "FACELAKE_DAGSTER_PG_URL",
    "FACELAKE_EXECUTOR",
    "FACELAKE_CELERY_BROKER",
    "FACELAKE_CELERY_LOST_WORKER_S",
    "FACELAKE_ROOT",
    "FACELAKE_SOURCES",
    "FACELAKE_S3__ENDPOINT_URL",
    "FACELAKE_S3__KEY",
    "FACELAKE_S3__SECRET",
    "FACELAKE_COMPUTE_LOGS_BUCKET",
    "FACELAKE_MODELS__CACHE_DIR",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "HF_HUB_OFFLINE",
)
"""The environment every facelake service gets (docker-compose.yml's ``x-facelake`` environment)."""

START_TIMEOUT_S = 240.0
RUN_TIMEOUT_S = 600.0
STOP_GRACE_S = 15.0


# --- values both sides share ---------------------------------------------------------------------------


def service_command(name: str, values: dict[str, str], worker_name: str | None = None) -> list[str]:
    """The service's command for ``values``; a local worker gets ``LOCAL_WORKER_OPTIONS`` appended."""
    command = SERVICES[name].format(**values).split()
    if worker_name is not None:
        command += LOCAL_WORKER_OPTIONS.format(name=worker_name).split()
    return command


def workspace(host: str, port: int) -> dict[str, Any]:
    """The workspace the webserver and the daemon load: the code server over gRPC (deploy/workspace.yaml)."""
    return {"load_from": [{"grpc_server": {"host": host, "port": port, "location_name": LOCATION}}]}


def deployment_env(
    *,
    home: Path | str,
    postgres_url: str,
    broker: str,
    s3_endpoint: str,
    sources: str,
    models: Path | str,
    lost_worker_s: float = 60.0,
) -> dict[str, str]:
    """The variables of ``ENV_KEYS`` for one deployment (the same values compose gives its containers)."""
    env = {
        "DAGSTER_HOME": str(home),
        "FACELAKE_DAGSTER_PG_URL": postgres_url,
        "FACELAKE_EXECUTOR": "celery",
        "FACELAKE_CELERY_BROKER": broker,
        "FACELAKE_CELERY_LOST_WORKER_S": f"{lost_worker_s:g}",
        "FACELAKE_ROOT": f"s3://{BUCKET}/lake",
        "FACELAKE_SOURCES": sources,
        "FACELAKE_S3__ENDPOINT_URL": s3_endpoint,
        "FACELAKE_S3__KEY": S3_KEY,
        "FACELAKE_S3__SECRET": S3_SECRET,
        "FACELAKE_COMPUTE_LOGS_BUCKET": BUCKET,
        "FACELAKE_MODELS__CACHE_DIR": str(models),
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
    }
    assert tuple(env) == ENV_KEYS
    return env


# --- processes -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Service:
    """A started process in its own process group, its output going to ``log``."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.process.returncode if self.process else None
            raise RuntimeError(f"{self.name} exited ({code}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, then SIGKILL what is left of it."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class RedisServer:
    """A redis-server of this deployment's own on a free port, without persistence (a restart empties it)."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
        command += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(base)]
        self.service = Service("redis", command, os.environ.copy(), base / "redis.log")

    def ping(self) -> bool:
        import redis

        try:
            with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def start(self) -> RedisServer:
        self.service.start()
        wait_for(lambda: self.service.check_alive() or self.ping(), 30, f"redis-server on {self.port}")
        return self

    def stop(self) -> None:
        self.service.stop()

    def restart(self) -> None:
        """Stop and start again on the same port: everything it held is gone."""
        self.stop()
        wait_for(lambda: not self.ping(), 30, "redis-server to stop")
        self.start()


class S3Server:
    """moto's S3 server on a free port (docker-compose runs MinIO) with the deployment's bucket."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(BIN_DIR / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.service = Service("s3", command, os.environ.copy(), base / "s3.log")

    def answers(self) -> bool:
        self.service.check_alive()
        try:
            return requests.get(self.url, timeout=2).status_code < 500
        except requests.ConnectionError:
            return False

    def start(self) -> S3Server:
        self.service.start()
        wait_for(self.answers, 60, f"the S3 server on {self.url}")
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)  # compose: the createbuckets service
        return self

    def stop(self) -> None:
        self.service.stop()


def create_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the Postgres server (libpq URL); its SQLAlchemy URL and a function dropping it."""
    import psycopg2

    name = f"facelake_topology_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(server_url, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()

    def drop() -> None:
        connection = psycopg2.connect(server_url, connect_timeout=5)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.close()

    url = f"{server_url.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgresql+psycopg2://", 1)
    return url, drop


# --- the offline world -------------------------------------------------------------------------------------


@dataclass
class World:
    """The offline LAION-Face world: part 00000 (synthetic.world) plus small extra parts of faces only."""

    laion: Any
    server: Any
    config_path: Path
    sources: Path
    extra_parts: dict[str, list[int]] = field(default_factory=dict)


def build_world(base: Path, server: Any, extra_parts: Sequence[str] = (), extra_rows: int = 6) -> World:
    """Part 00000 of synthetic.world (33 kept rows, 4 shards of 10) and ``extra_parts`` of ``extra_rows``
    good face images each, with their ids in ``laion_face_ids.pth`` and their released detections."""
    import numpy as np

    from facelake.laion.formats import META_PART_TEMPLATE
    from synthetic.face_photos import varied_crops
    from synthetic.laion_meta import sample_ids_for, write_meta_part
    from synthetic.laion_pth import save_face_ids, save_sample2detect
    from synthetic.world import WorldSpec, build_laion_world

    spec = WorldSpec(rows=60, face_rows=40)
    laion = build_laion_world(base, server, spec)
    splits = [laion.face_ids if i == 0 else np.zeros(0, np.int64) for i in range(32)]
    extras: dict[str, list[int]] = {}
    for part in extra_parts:
        index = int(part)
        crops = varied_crops("astronaut" if index % 2 else "grace_hopper", extra_rows, seed=index)
        urls: dict[int, str] = {}

        def url_for(sample_id: int, urls: dict[int, str] = urls) -> str:
            return urls.get(int(sample_id), f"http://images.invalid/{sample_id}.jpg")

        ids = sample_ids_for(extra_rows, index, first_id=index * 10_000_000)
        for sid, crop in zip(ids, crops, strict=True):
            urls[int(sid)] = server.add_image(f"part{index}/{sid}.jpg", crop.jpeg)
        write_meta_part(
            str(laion.sources / "laion400m-meta" / META_PART_TEMPLATE.format(part=index)),
            extra_rows,
            index,
            url_for=url_for,
            first_id=index * 10_000_000,
        )
        detections = {
            int(sid): [(c.box.astype(np.float32), c.landmarks.astype(np.float32), np.float32(0.99))]
            for sid, c in zip(ids, crops, strict=True)
        }
        save_sample2detect(
            str(laion.sources / "detection_metadata" / f"sample2detect_{index}.pth"), detections
        )
        splits[index] = ids
        extras[part] = [int(i) for i in ids]
    save_face_ids(str(laion.sources / "laion_face_ids.pth"), splits, container="list")
    return World(laion, server, laion.config_path, laion.sources, extras)


def write_world_config(world: World, schedule: dict[str, Any]) -> None:
    """The world's facelake.yaml with small shards; root, sources and S3 come from the environment."""
    config = yaml.safe_load(world.config_path.read_text())
    for key in ("root", "sources", "s3"):
        config.pop(key, None)
    config["download"].update(number_sample_per_shard=10)
    config["schedule"] = {**config.get("schedule", {}), **schedule}
    world.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def upload_sources(world: World, env: dict[str, str]) -> None:
    """Copy the world's source files to ``$FACELAKE_SOURCES`` in the bucket (compose keeps them there)."""
    from facelake.lake.storage import S3Options, Storage

    options = S3Options(
        endpoint_url=env["FACELAKE_S3__ENDPOINT_URL"],
        key=env["FACELAKE_S3__KEY"],
        secret=env["FACELAKE_S3__SECRET"],
    )
    storage = Storage(env["FACELAKE_SOURCES"], options)
    for path in sorted(world.sources.rglob("*")):
        if path.is_file():
            relative = path.relative_to(world.sources).as_posix()
            with storage.open(f"{env['FACELAKE_SOURCES']}/{relative}", "wb") as target:
                target.write(path.read_bytes())


# --- GraphQL -----------------------------------------------------------------------------------------------

LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status tags { key value } startTime endTime }
  }
}
"""

LOCATION_STATUS = """
query Locations {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

DAEMON_HEALTH = """
query DaemonHealth {
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } }
}
"""

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class GraphQL:
    """POSTs queries to a webserver's /graphql endpoint; GraphQL errors raise with the server's answer."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        answer = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def launch_run(self, job: str, partition: str | None = None, tags: dict[str, str] | None = None) -> str:
        """``launchRun`` of ``job`` (for ``partition``) as the Launchpad does; the new run's id."""
        all_tags = dict(tags or {})
        if partition is not None:
            all_tags["dagster/partition"] = partition
        params = {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": job},
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in all_tags.items()]},
        }
        result = self(LAUNCH_RUN, params=params)["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun {job} [{partition}]: {result}")
        return result["run"]["runId"]

    def launch_backfill(self, job: str, partitions: Sequence[str], tags: dict[str, str] | None = None) -> str:
        """``launchPartitionBackfill`` of the job's partition set, as the UI's backfill dialog does."""
        params = {
            "selector": {
                "partitionSetName": f"{job}_partition_set",
                "repositorySelector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
            },
            "partitionNames": list(partitions),
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        result = self(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"launchPartitionBackfill {job} {list(partitions)}: {result}")
        return result["backfillId"]

    def run(self, run_id: str) -> dict[str, Any]:
        return self(RUN_STATUS, runId=run_id)["runOrError"]

    def wait_run(self, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
        """Poll the run until it is finished (SUCCESS, FAILURE, CANCELED); fail at the deadline."""
        last: dict[str, Any] = {}

        def finished() -> bool:
            last.update(self.run(run_id))
            return last.get("status") in FINISHED

        try:
            wait_for(finished, timeout_s, f"run {run_id}", interval_s=1.0)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; last status {last.get('status')}") from None
        return last

    def location_loaded(self) -> bool:
        data = self(LOCATION_STATUS)["workspaceOrError"]
        entries = data.get("locationEntries", [])
        for entry in entries:
            error = entry.get("locationOrLoadError") or {}
            if error.get("__typename") == "PythonError":
                raise RuntimeError(f"code location {entry['name']} failed to load: {error['message']}")
        return any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries)

    def daemons_healthy(self) -> bool:
        statuses = self(DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
        return all(s["healthy"] for s in statuses if s["required"])


# --- the topology ------------------------------------------------------------------------------------------


@dataclass
class TopologyOptions:
    """What a local deployment needs besides its base folder."""

    postgres_server: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    """A libpq URL of the Postgres server; the topology creates (and drops) a database of its own there."""
    extra_parts: Sequence[str] = ()
    schedule: dict[str, Any] = field(default_factory=dict)
    lost_worker_s: float = 60.0
    extra_env: dict[str, str] = field(default_factory=dict)
    instance_overrides: dict[str, Any] = field(default_factory=dict)
    """Merged over deploy/dagster.deployment.yaml's top-level blocks (tests shorten the monitoring interval)."""


class Topology:
    """Everything docker-compose.yml starts, as local processes; ``start`` it, ``stop`` it (or ``with``)."""

    def __init__(self, base: Path, options: TopologyOptions | None = None) -> None:
        self.base = Path(base).absolute()
        self.options = options or TopologyOptions()
        self.token = uuid.uuid4().hex[:6]
        self.home = self.base / "dagster_home"
        self.logs = self.base / "logs"
        self.code_port = free_port()
        self.web_port = free_port()
        self.services: dict[str, Service] = {}
        self.redis: RedisServer | None = None
        self.s3: S3Server | None = None
        self.world: World | None = None
        self.env: dict[str, str] = {}
        self.graphql = GraphQL(f"http://127.0.0.1:{self.web_port}")
        self._cleanups: list[Callable[[], None]] = []
        self._exit = contextlib.ExitStack()

    # --- start/stop ----------------------------------------------------------------------------------
    def __enter__(self) -> Topology:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from synthetic.image_server import ImageServer

        self.base.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.redis = RedisServer(self.base).start()
        self._cleanups.append(self.redis.stop)
        self.s3 = S3Server(self.base).start()
        self._cleanups.append(self.s3.stop)
        postgres_url, drop = create_database(self.options.postgres_server)
        self._cleanups.append(drop)
        server = self._exit.enter_context(ImageServer())
        self.world = build_world(self.base / "world", server, self.options.extra_parts)
        write_world_config(self.world, self.options.schedule)
        self.env = deployment_env(
            home=self.home,
            postgres_url=postgres_url,
            broker=self.redis.url,
            s3_endpoint=self.s3.url,
            sources=f"s3://{BUCKET}/sources",
            models=self.base / "models",
            lost_worker_s=self.options.lost_worker_s,
        )
        upload_sources(self.world, self.env)
        self._write_home()
        process_env = self.process_env()
        values = self.local_values()
        for name in SERVICES:
            worker = f"{name}-{self.token}" if name.startswith("worker-") else None
            command = service_command(name, values, worker)
            command[0] = str(BIN_DIR / command[0]) if (BIN_DIR / command[0]).exists() else command[0]
            self.services[name] = Service(name, command, process_env, self.logs / f"{name}.log")
        self._start_services()

    def _write_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        instance = yaml.safe_load((DEPLOY_DIR / "dagster.deployment.yaml").read_text())
        instance.update(self.options.instance_overrides)
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(instance, sort_keys=False))
        (self.home / "workspace.yaml").write_text(yaml.safe_dump(workspace("127.0.0.1", self.code_port)))

    def local_values(self) -> dict[str, str]:
        return {
            "bind": "127.0.0.1",
            "code_port": str(self.code_port),
            "web_port": str(self.web_port),
            "workspace": str(self.home / "workspace.yaml"),
            "celery_yaml": str(DEPLOY_DIR / "celery.yaml"),
        }

    def process_env(self) -> dict[str, str]:
        """This process's environment with the deployment's variables, the world's config and the repo."""
        assert self.world is not None
        env = os.environ.copy()
        for key in [k for k in env if k.startswith("FACELAKE_") or k == "DAGSTER_HOME"]:
            del env[key]
        env.update(self.env)
        env.update(
            FACELAKE_CONFIG=str(self.world.config_path),
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",  # dagster-celery starts `celery`
            PYTHONUNBUFFERED="1",
            NO_ALBUMENTATIONS_UPDATE="1",
            WANDB_MODE="disabled",
        )
        env.update(self.options.extra_env)
        return env

    def _start_services(self) -> None:
        """Start the code server first (webserver and daemon load it), then the rest, and wait for each."""
        self.services["codeserver"].start()
        for name in ("worker-cpu", "worker-gpu"):
            self.services[name].start()
        wait_for(self._code_server_serving, START_TIMEOUT_S, "the code server", interval_s=0.5)
        for name in ("webserver", "daemon"):
            self.services[name].start()
        wait_for(self._webserver_answers, START_TIMEOUT_S, "the webserver", interval_s=0.5)
        wait_for(self.graphql.location_loaded, START_TIMEOUT_S, "the code location in the webserver")
        for name in ("worker-cpu", "worker-gpu"):
            self.wait_worker(name)
        wait_for(self._daemons_healthy, START_TIMEOUT_S, "the daemon's heartbeats", interval_s=1.0)

    def _code_server_serving(self) -> bool:
        from dagster._grpc.client import DagsterGrpcClient

        self.services["codeserver"].check_alive()
        with socket.socket() as sock:  # before gRPC, which logs every refused connection
            if sock.connect_ex(("127.0.0.1", self.code_port)) != 0:
                return False
        try:
            return DagsterGrpcClient(port=self.code_port, host="127.0.0.1").health_check_query() == "SERVING"
        except Exception:
            return False

    def _webserver_answers(self) -> bool:
        self.services["webserver"].check_alive()
        try:
            return requests.get(f"{self.graphql.url}/server_info", timeout=2).ok
        except requests.ConnectionError:
            return False

    def _daemons_healthy(self) -> bool:
        self.services["daemon"].check_alive()
        return self.graphql.daemons_healthy()

    def celery_app(self) -> Any:
        """A celery app on the deployment's broker, configured as the workers are (deploy/celery.yaml)."""
        from dagster_celery.executor import CeleryExecutor
        from dagster_celery.make_app import make_app

        from dagster_project.executors import load_celery_yaml

        config = load_celery_yaml(DEPLOY_DIR / "celery.yaml")
        broker = self.env["FACELAKE_CELERY_BROKER"]
        executor = CeleryExecutor.for_cli(broker, broker, config_source=config.get("config_source"))
        return make_app(executor.app_args())

    def worker_nodename(self, name: str) -> str:
        """The celery node name of a worker service (``worker-cpu-<token>@<host>``)."""
        return f"{name}-{self.token}@{socket.gethostname()}"

    def wait_worker(self, name: str, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Until the worker answers on the broker: its stats (pool pids and broker) as it reports them."""
        service = self.services[name]
        node = self.worker_nodename(name)
        app = self.celery_app()
        try:

            def stats() -> dict[str, Any] | None:
                service.check_alive()
                replies = app.control.inspect(destination=[node], timeout=1.0).stats() or {}
                return replies.get(node)

            return wait_for(stats, timeout_s, f"celery worker {node}", interval_s=0.0)
        finally:
            app.close()

    def restart_service(self, name: str) -> None:
        """Stop and start a service again (compose's ``restart: unless-stopped`` after a crash)."""
        service = self.services[name]
        service.stop()
        service.start()
        if name.startswith("worker-"):
            self.wait_worker(name)

    def stop(self) -> None:
        """Stop every service (workers and daemon first), the servers, and drop the database."""
        for name in ("daemon", "webserver", "worker-cpu", "worker-gpu", "codeserver"):
            if name in self.services:
                with contextlib.suppress(Exception):
                    self.services[name].stop()
        self._exit.close()
        for cleanup in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self._cleanups.clear()

    # --- operating it ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """This process's environment set to the deployment's while in the block (to open its instance)."""
        saved = os.environ.copy()
        os.environ.update({k: v for k, v in self.process_env().items() if k not in ("PATH",)})
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def materialize_part(self, partition: str = PART, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, dict]:
        """The inputs, then ``laion_face_part_job`` for ``partition``, each launched through GraphQL and
        awaited; the finished runs (id, status, tags) by job."""
        runs = {}
        for job, part in (("laion_face_inputs_job", None), ("laion_face_part_job", partition)):
            run = self.graphql.wait_run(self.graphql.launch_run(job, part), timeout_s)
            if run["status"] != "SUCCESS":
                raise RuntimeError(f"{job} [{part}] ended {run['status']}: see {self.logs} and the UI")
            runs[job] = run
        return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, default=REPO_ROOT / ".facelake" / "topology")
    parser.add_argument(
        "--postgres", default=os.environ.get("FACELAKE_TEST_POSTGRES_URL", TopologyOptions.postgres_server)
    )
    parser.add_argument("--keep-running", action="store_true", help="after part 00000, serve until Ctrl-C")
    args = parser.parse_args(argv)
    if args.base.exists():
        shutil.rmtree(args.base)
    started = time.monotonic()
    with Topology(args.base, TopologyOptions(postgres_server=args.postgres)) as topology:
        print(
            f"started in {time.monotonic() - started:.0f} s: UI {topology.graphql.url}, logs {topology.logs}"
        )
        runs = topology.materialize_part(PART)
        for job, run in runs.items():
            print(f"{job}: run {run['runId']} {run['status']}")
        print(
            json.dumps(
                {"lake": topology.env["FACELAKE_ROOT"], "s3": topology.env["FACELAKE_S3__ENDPOINT_URL"]}
            )
        )
        if args.keep_running:
            print("serving; Ctrl-C stops every process")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    print(f"stopped; {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
