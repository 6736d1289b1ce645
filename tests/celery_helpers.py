"""Real dagster-celery workers in subprocesses, runs sent to them through ``dagster job execute``, and what
the instance recorded about which worker ran each step.

Workers and executor read one config, ``deploy/celery.yaml`` (the file docker-compose's workers get with
``-y``); the broker and result backend come from ``FACELAKE_CELERY_BROKER``, set by the test to a Redis
database it claimed. Every wait polls with a deadline, and a run that does not finish in time fails naming
the steps still waiting and the queues they wait on.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, Definitions, RunsFilter
from dagster_celery.cli import get_validated_config
from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

from tests.cli_helpers import (
    BIN_DIR,
    CODE_LOCATION,
    DEPLOY_DIR,
    dagster_command,
    start_process,
    stop_process_group,
)

CELERY_YAML = DEPLOY_DIR / "celery.yaml"
WORKER_START_TIMEOUT_S = 180
STOP_GRACE_S = 10.0
CELERY_DELEGATE_MARKER = "celery_queue_wait"
"""The marker dagster-celery puts on its submit (start) and 'executing in celery worker' (end) engine events."""
SUBMITTED = re.compile(r'Submitting celery task for step "(?P<step>[^"]+)" to queue "(?P<queue>[^"]+)"')
WORKER_METADATA = "Celery worker"
"""The engine-event metadata key under which the task names the worker (its node name) running a step."""
FINISHED = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_SKIPPED}


# --- config and app ----------------------------------------------------------------------------------


def celery_app(config_yaml: Path = CELERY_YAML) -> Celery:
    """The celery app a worker started with ``-y config_yaml`` builds, for this process's environment."""
    config = get_validated_config(str(config_yaml))
    app_keys = ("broker", "backend", "include", "config_source")  # not ``retries``: the executor's alone
    return make_app(CeleryExecutor.for_cli(**{key: config.get(key) for key in app_keys}).app_args())


def queue_tag_problems(defs: Definitions, queues: tuple[str, ...]) -> list[str]:
    """Every executable asset and asset-check op whose ``dagster-celery/queue`` tag is missing or unknown."""
    problems = []
    for assets_def in defs.resolve_asset_graph().assets_defs:
        if not assets_def.is_executable:
            continue
        produces = [key.to_user_string() for key in assets_def.keys]
        produces += [f"check {key.asset_key.to_user_string()}:{key.name}" for key in assets_def.check_keys]
        for op_def in assets_def.node_def.iterate_op_defs():
            queue = op_def.tags.get(DAGSTER_CELERY_QUEUE_TAG)
            if queue not in queues:
                problems.append(
                    f"{op_def.name} ({', '.join(produces)}): {DAGSTER_CELERY_QUEUE_TAG}={queue!r}"
                )
    return sorted(problems)


# --- workers -----------------------------------------------------------------------------------------


def worker_command(queue: str, name: str, config_yaml: Path = CELERY_YAML) -> list[str]:
    """``dagster-celery worker start -A dagster_celery.app -y <yaml> -q <queue>``, one process, named."""
    return [
        str(BIN_DIR / "dagster-celery"),
        *("worker", "start", "-A", "dagster_celery.app", "-y", str(config_yaml), "-q", queue, "-n", name),
        # after --: celery's own options; one pool process per worker on a 2-core machine
        *("--", "--concurrency=1", "--without-gossip", "--without-mingle"),
    ]


@dataclass
class Worker:
    """A started worker: its queue, node name (``<name>@<host>``), process group and log."""

    queue: str
    name: str
    process: Any
    log: Path
    nodename: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    active_queues: list[str] = field(default_factory=list)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def pool_pids(self) -> set[int]:
        """The pids of the worker's pool processes, the ones that run steps."""
        return set(self.stats.get("pool", {}).get("processes", []))

    def stop(self) -> None:
        stop_process_group(self.process, STOP_GRACE_S)


def start_worker(queue: str, name: str, env: dict[str, str], log: Path) -> Worker:
    """Start a worker for ``queue`` in its own process group (``stop`` kills the group)."""
    process = start_process(worker_command(queue, name), env, log)
    return Worker(queue, name, process, log)


def wait_until_ready(app: Celery, worker: Worker, timeout_s: float = WORKER_START_TIMEOUT_S) -> Worker:
    """Ask the worker through ``app``'s broker for its stats and queues until it answers; fail if it dies.

    A worker listening on any other broker (dagster-celery's amqp default) never answers here.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if worker.process.poll() is not None:
            raise AssertionError(
                f"celery worker {worker.name} exited {worker.process.returncode}:\n{worker.log_tail()}"
            )
        stats = app.control.inspect(timeout=1.0).stats() or {}
        mine = [node for node in stats if node.startswith(f"{worker.name}@")]
        if mine:
            worker.nodename = mine[0]
            worker.stats = stats[worker.nodename]
            replies = app.control.inspect(destination=[worker.nodename], timeout=5.0).active_queues() or {}
            worker.active_queues = sorted(q["name"] for q in replies.get(worker.nodename, []))
            return worker
        if time.monotonic() > deadline:
            raise AssertionError(
                f"celery worker {worker.name} did not answer on {app.conf.broker_url} within {timeout_s:.0f} s:\n"
                f"{worker.log_tail()}"
            )
        # no sleep: each broadcast above already waits its timeout for replies


def banner_url(worker: Worker, line: str) -> str | None:
    """The URL on the ``.> transport:`` or ``.> results:`` line of the worker's startup banner (None if absent)."""
    match = re.search(rf"\.> {line}:\s+(\S+)", worker.log.read_text(errors="replace"))
    return match.group(1) if match else None


# --- runs ----------------------------------------------------------------------------------------------


def job_execute_command(job: str, partition: str) -> list[str]:
    """``dagster job execute -m dagster_project -j <job>`` for one partition (the ``dagster/partition`` tag)."""
    return dagster_command(
        "job", "execute", *CODE_LOCATION, "-j", job, "--tags", json.dumps({"dagster/partition": partition})
    )


@dataclass
class StepTrace:
    """What the event log says about one step of a celery run."""

    key: str
    queues: set[str] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    start_pids: set[int] = field(default_factory=set)
    started: bool = False
    outcome: str | None = None


def job_runs(instance: DagsterInstance, job: str, partition: str) -> list[DagsterRun]:
    return list(instance.get_runs(RunsFilter(job_name=job, tags={"dagster/partition": partition})))


def step_traces(instance: DagsterInstance, run_id: str) -> dict[str, StepTrace]:
    """Per step: the queue it was submitted to, the worker that took it, its STEP_START pids and outcome."""
    traces: dict[str, StepTrace] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        trace = traces.setdefault(event.step_key, StepTrace(event.step_key))
        if event.event_type == DagsterEventType.ENGINE_EVENT:
            submitted = SUBMITTED.search(event.message or "")
            if submitted:
                trace.queues.add(submitted["queue"])
            worker = event.engine_event_data.metadata.get(WORKER_METADATA)
            if worker is not None:
                trace.workers.add(str(worker.value))
        elif event.event_type == DagsterEventType.STEP_START:
            trace.started = True
            if event.pid is not None:
                trace.start_pids.add(event.pid)
        elif event.event_type in FINISHED:
            trace.outcome = event.event_type.value
    return traces


def stuck_report(instance: DagsterInstance, job: str, partition: str, consumed: set[str]) -> str:
    """Which steps of the job's latest run wait on which queue (and whether any worker consumes it)."""
    runs = job_runs(instance, job, partition)
    if not runs:
        return f"no run of {job} was created"
    run = runs[0]
    lines = [f"run {run.run_id} of {job} is {run.status.value}"]
    for key, trace in sorted(step_traces(instance, run.run_id).items()):
        if trace.outcome:
            continue
        queues = ", ".join(sorted(trace.queues)) or "?"
        if not trace.queues:
            state = "not submitted yet"
        elif trace.started:
            state = f"running on {', '.join(sorted(trace.workers)) or '?'} (queue {queues})"
        else:
            unserved = sorted(trace.queues - consumed)
            note = (
                f": no worker consumes {unserved} (the workers consume {sorted(consumed)}; a step without a "
                f"{DAGSTER_CELERY_QUEUE_TAG} tag goes to dagster-celery's default queue 'dagster')"
                if unserved
                else ""
            )
            state = f"waiting on queue {queues}{note}"
        lines.append(f"  step {key}: {state}")
    return "\n".join(lines)


def execute_job_on_celery(
    job: str,
    partition: str,
    env: dict[str, str],
    home: Path,
    log: Path,
    workers: list[Worker],
    timeout_s: float,
) -> DagsterRun:
    """Run the job with ``dagster job execute`` and wait for it, at most ``timeout_s``; the finished run.

    At the deadline the CLI's process group is killed and the test fails naming each unfinished step and the
    queue it waits on; a CLI that exits non-zero fails with its output and the workers' logs.
    """
    process = start_process(job_execute_command(job, partition), env, log)
    try:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with DagsterInstance.from_config(str(home)) as instance:
                report = stuck_report(instance, job, partition, {q for w in workers for q in w.active_queues})
            raise AssertionError(
                f"{job} [{partition}] did not finish within {timeout_s:.0f} s:\n{report}"
            ) from None
    finally:
        stop_process_group(process, STOP_GRACE_S)
    output = log.read_text(errors="replace")
    if process.returncode != 0:
        worker_logs = "\n".join(f"--- worker {w.name}:\n{w.log_tail(3000)}" for w in workers)
        raise AssertionError(
            f"{job} [{partition}] exited {process.returncode}:\n{output[-5000:]}\n{worker_logs}"
        )
    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = job_runs(instance, job, partition)
    assert run.status == DagsterRunStatus.SUCCESS, f"{job}: {run.status}\n{output[-5000:]}"
    return run


def iter_step_queues(defs: Definitions, job: str) -> Iterator[tuple[str, str | None]]:
    """(step key, ``dagster-celery/queue`` tag) of each op of the job (step keys are node names here)."""
    job_def = defs.resolve_job_def(job)
    for node in job_def.graph.nodes:
        yield node.name, node.tags.get(DAGSTER_CELERY_QUEUE_TAG)
