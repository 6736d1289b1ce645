"""One deployment for the operations tests: deploy/local_topology.py's processes, started once per module.

The topology is docker-compose.yml as local processes (code server, webserver, daemon, a cpu and a gpu
celery worker) on a fresh Postgres database, a redis-server of its own on a free port (tests restart it; the
machine's Redis is never touched) and moto's S3 server holding the lake, the sources and the compute logs.
Its world is the offline LAION-Face part 00000 plus the small extra parts ``EXTRA_PARTS``. The test process
gets the deployment's environment for the module, so ``load_settings()`` and the Dagster instance it opens
are the deployment's. Helpers read what the instance recorded: runs by tag, step starts and their pids,
failure texts, run intervals; and what the lake holds: every file under a partition listed by its manifest.

Timing knobs differ from production only where a test would otherwise wait for minutes: a lost celery
worker is declared after ``LOST_WORKER_S`` (production 60 s, asked every ``PING_S``, production 10 s), run
monitoring polls every ``MONITOR_POLL_S`` (production 60 s) and frees the pool slots of a finished run after
``FREE_SLOTS_S`` (production 30 s); everything else is deploy/dagster.deployment.yaml as shipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRun, RunRecord, RunsFilter

from facelake.lake.commit import LEASE, MANIFEST, PartitionArtifact
from facelake.lake.storage import Storage
from facelake.settings import load_settings
from tests.cli_helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "local_topology.py"
EXTRA_PARTS = ("00002", "00005", "00008")
LOST_WORKER_S = 20.0
PING_S = 5.0
MONITOR_POLL_S = 5
FREE_SLOTS_S = 5
SCHEDULE = {"subset": "20m", "cron": "0 0 1 1 *", "max_in_flight": 4}
"""The schedule as the operations tests run it: once a year (the real daemon never ticks during a test; the
tests evaluate ticks through the daemon's scheduler code path at chosen times), four parts in flight."""


def load_script() -> Any:
    """deploy/local_topology.py as a module (deploy/ is not a package: the script runs as a file)."""
    name = "facelake_local_topology"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def postgres_server_url() -> str:
    return os.environ.get("FACELAKE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def services_problem() -> str | None:
    """Why the topology cannot start here (no Postgres, no redis-server binary), or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import psycopg2

        psycopg2.connect(postgres_server_url(), connect_timeout=5).close()
    except Exception as error:
        return f"Postgres at {postgres_server_url()}: {error}"
    return None


@dataclass
class Deployment:
    """The started topology, the instance it records to, and the lake it writes."""

    topology: Any
    instance: DagsterInstance
    lake: Storage
    script: Any

    @property
    def graphql(self) -> Any:
        return self.topology.graphql


@pytest.fixture(scope="module", name="deployment")
def deployment_fixture(tmp_path_factory) -> Iterator[Deployment]:
    """The started topology for a test module (import ``deployment_fixture`` into it; use ``deployment``)."""
    from tests.conftest import need_service

    problem = services_problem()
    if problem:
        need_service("the local topology's services", problem)
    script = load_script()
    options = script.TopologyOptions(
        postgres_server=postgres_server_url(),
        extra_parts=EXTRA_PARTS,
        schedule=SCHEDULE,
        lost_worker_s=LOST_WORKER_S,
        extra_env={"FACELAKE_CELERY_PING_S": f"{PING_S:g}"},
        instance_overrides={"run_monitoring": run_monitoring_for_tests()},
    )
    base = tmp_path_factory.mktemp("topology")
    with script.Topology(base, options) as topology, pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("FACELAKE_")]:
            env.delenv(key)
        for key, value in topology.process_env().items():
            if key != "PATH":
                env.setenv(key, value)
        with DagsterInstance.from_config(str(topology.home)) as instance:
            yield Deployment(topology, instance, load_settings().storage(), script)


def run_monitoring_for_tests() -> dict[str, Any]:
    """deploy/dagster.deployment.yaml's run monitoring with a short poll interval."""
    shipped = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.deployment.yaml").read_text())["run_monitoring"]
    return {
        **shipped,
        "poll_interval_seconds": MONITOR_POLL_S,
        "free_slots_after_run_end_seconds": FREE_SLOTS_S,
    }


# --- waiting on the instance ---------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str | Callable[[], str]) -> Any:
    """Poll ``condition`` (every 0.2 s) until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {text}")
        time.sleep(0.2)


def run_records(instance: DagsterInstance, **tags: str) -> list[RunRecord]:
    """Run records whose tags include ``tags``, oldest first."""
    records = instance.get_run_records(RunsFilter(tags=tags) if tags else None)
    return sorted(records, key=lambda r: r.create_timestamp)


def finished(instance: DagsterInstance, run_id: str) -> DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.is_finished else None


def wait_run_finished(deployment: Deployment, run_id: str, timeout_s: float) -> DagsterRun:
    instance = deployment.instance
    return wait_for(
        lambda: finished(instance, run_id),
        timeout_s,
        lambda: (
            f"run {run_id} to finish ({instance.get_run_by_id(run_id).status}):\n" + service_tails(deployment)
        ),
    )


def service_tails(deployment: Deployment, chars: int = 1500) -> str:
    services = deployment.topology.services
    return "\n".join(f"--- {name}:\n{s.log_tail(chars)}" for name, s in services.items())


def step_start(instance: DagsterInstance, run_id: str, step_key: str) -> Any:
    """The STEP_START event of ``step_key`` in the run, or None."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START):
        if entry.dagster_event.step_key == step_key:
            return entry.dagster_event
    return None


def step_outcomes(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """Step key -> STEP_SUCCESS / STEP_FAILURE / STEP_SKIPPED, for the steps that finished."""
    kinds = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_SKIPPED}
    outcomes = {}
    for entry in instance.all_logs(run_id, of_type=kinds):
        outcomes[entry.dagster_event.step_key] = entry.dagster_event.event_type_value
    return outcomes


def step_workers(instance: DagsterInstance, run_id: str) -> dict[str, set[str]]:
    """Step key -> the celery workers that said they executed it (dagster-celery's engine event)."""
    workers: dict[str, set[str]] = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        worker = event.engine_event_data.metadata.get("Celery worker") if event.engine_event_data else None
        if worker is not None and event.step_key:
            workers.setdefault(event.step_key, set()).add(str(worker.value))
    return workers


def failure_text(instance: DagsterInstance, run_id: str) -> str:
    """Every message of the run's failure events and error-level logs, with their error chains."""
    lines = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            if entry.level >= 40:
                lines.append(entry.user_message)
            continue
        if event.event_type in (DagsterEventType.RUN_FAILURE, DagsterEventType.STEP_FAILURE) or (
            event.event_type == DagsterEventType.ENGINE_EVENT and entry.level >= 40
        ):
            lines.append(event.message or "")
            error = getattr(event.event_specific_data, "error", None)
            while error is not None:
                lines.append(error.to_string())
                error = error.cause
    return "\n".join(lines)


def intervals(records: Iterable[RunRecord]) -> list[tuple[float, float, str]]:
    """(start, end, run id) of runs that started; a run still going ends now."""
    now = time.time()
    return [
        (r.start_time, r.end_time or now, r.dagster_run.run_id) for r in records if r.start_time is not None
    ]


def max_overlap(spans: list[tuple[float, float, str]]) -> int:
    """The largest number of the spans that were open at one instant."""
    edges = sorted([(start, 1) for start, _, _ in spans] + [(end, -1) for _, end, _ in spans])
    open_now = peak = 0
    for _, delta in edges:  # at equal times an end (-1) sorts before a start (+1)
        open_now += delta
        peak = max(peak, open_now)
    return peak


# --- the lake ------------------------------------------------------------------------------------------------


def unlisted_files(artifact: PartitionArtifact) -> list[str]:
    """Files under the committed partition that its manifest does not list (a duplicate or a leftover)."""
    manifest = artifact.require_manifest()
    listed = {entry.path for entry in manifest.files} | {MANIFEST, LEASE}
    storage = artifact.storage
    present = [storage.relative(uri, artifact.prefix) for uri in storage.find(artifact.prefix)]
    return sorted(p for p in present if p not in listed)
