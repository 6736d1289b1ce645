"""One executor per run (Dagster's rule): local multiprocess by default, celery in production.

Per-step routing is by op tags (``dagster-celery/queue``: ``cpu`` or ``gpu``) and pools (``gpu``), so asset
code never changes between a laptop and a GPU cluster. Select with ``FACELAKE_EXECUTOR``.

Lost workers: dagster-celery's executor waits for a step's result forever. A worker whose pool process is
killed reports ``WorkerLostError`` (the step fails, and the failure here names the worker); a worker whose
main process dies takes its pool process with it (celery sets ``PR_SET_PDEATHSIG``) and reports nothing. So
the facelake celery executor watches every started step (``task_track_started``: the result backend names
the worker that took it): every ``FACELAKE_CELERY_PING_S`` seconds (10) it asks that worker whether it still
runs the task, and fails the step, naming it and the worker, when the worker has not answered for
``FACELAKE_CELERY_LOST_WORKER_S`` seconds (60) or answers twice without knowing the task (it was restarted
under the same name, as a container with a restart policy is). A run whose worker's main process dies
therefore fails within LOST + PING + a few seconds (75 s by default), or about 2 x PING after the worker is
back; a step still waiting in its queue is bounded by the instance's run monitoring (``max_runtime_seconds``
in deploy/dagster.yaml).

Celery: the executor and the workers must agree on the broker, the result backend and the app settings, or
the workers never see a step (dagster-celery's fallback broker is ``pyamqp://guest@localhost:5672//``). Both
read one config: ``deploy/celery.yaml``, the file the workers get with
``dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml -q cpu`` (or ``-q gpu``). Its
``execution: config:`` block is :data:`CELERY_CONFIG` below (a test keeps the two equal), so a code location
without the file (the Docker image) configures the executor identically; ``FACELAKE_CELERY_CONFIG=<path>``
makes the executor read such a file instead. Broker and backend come from ``FACELAKE_CELERY_BROKER`` on
both sides.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dagster import (
    ExecutorDefinition,
    executor,
    in_process_executor,
    multiple_process_executor_requirements,
    multiprocess_executor,
)

MULTIPROCESS = multiprocess_executor.configured(
    {
        "max_concurrent": 2,
        "tag_concurrency_limits": [{"key": "facelake/network", "value": "download", "limit": 1}],
    },
    name="facelake_multiprocess",
)

CELERY_BROKER_ENV = "FACELAKE_CELERY_BROKER"
CELERY_CONFIG_ENV = "FACELAKE_CELERY_CONFIG"
CELERY_QUEUES = ("cpu", "gpu")
"""The queues the workers consume; every step names one in its ``dagster-celery/queue`` op tag."""

CELERY_CONFIG: dict[str, Any] = {
    "broker": {"env": CELERY_BROKER_ENV},
    "backend": {"env": CELERY_BROKER_ENV},
    "config_source": {
        "broker_connection_retry_on_startup": True,
        # the result backend names the worker (and pool pid) that started a step: the executor watches it
        "task_track_started": True,
        # a worker takes a step only when its pool has a free process: a step never waits in a busy (or
        # dying) worker's buffer while another worker is free, and a killed worker takes no queued step along
        "worker_disable_prefetch": True,
        # keep the pool processes' real stdout/stderr (celery would swap in a logging proxy without a file
        # descriptor, which Dagster's compute-log capture cannot redirect: the UI would show empty logs)
        "worker_redirect_stdouts": False,
        # dagster-celery's own transport options, plus a visibility timeout longer than any step: a Redis
        # broker hands a reserved but unacknowledged task to another worker after it (default one hour),
        # which would run a step queued behind a long GPU step twice.
        "broker_transport_options": {
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
            "visibility_timeout": 86400,
        },
    },
}
"""The celery executor's config: ``execution: config:`` of deploy/celery.yaml, as Dagster config."""


def load_celery_yaml(path: str | Path) -> dict[str, Any]:
    """The ``execution: config:`` block of a dagster-celery worker config file (the ``-y`` file)."""
    parsed = yaml.safe_load(Path(path).read_text()) or {}
    config = parsed.get("execution", {}).get("config") if isinstance(parsed, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: no 'execution: config:' mapping (the dagster-celery worker -y format)")
    return config


def celery_config() -> dict[str, Any]:
    """The executor's config: ``$FACELAKE_CELERY_CONFIG`` when set, else :data:`CELERY_CONFIG`.

    Refuses a config without a broker (dagster-celery would fall back to RabbitMQ on localhost) and one whose
    broker or backend names an environment variable that is not set.
    """
    path = os.environ.get(CELERY_CONFIG_ENV)
    config = load_celery_yaml(path) if path else CELERY_CONFIG
    source = path or "dagster_project.executors.CELERY_CONFIG"
    for key in ("broker", "backend"):
        value = config.get(key)
        if not value:
            raise ValueError(f"{source}: no celery {key}; dagster-celery would fall back to its amqp default")
        if isinstance(value, dict) and "env" in value and not os.environ.get(value["env"]):
            raise ValueError(
                f"FACELAKE_EXECUTOR=celery: set {value['env']} (the celery {key} URL, e.g. "
                "redis://127.0.0.1:6379/0), the same for the workers started with -y deploy/celery.yaml"
            )
    return config


LOST_WORKER_ENV = "FACELAKE_CELERY_LOST_WORKER_S"
PING_ENV = "FACELAKE_CELERY_PING_S"
DEFAULT_LOST_WORKER_S = 60.0
DEFAULT_PING_S = 10.0


class CeleryWorkerLost(Exception):
    """A started step's worker stopped answering pings: its main process is gone (killed, OOM, host lost)."""


class CeleryStepFailed(Exception):
    """A step's celery task failed on a worker (e.g. ``WorkerLostError``: its pool process was killed)."""


@dataclass
class WorkerWatch:
    """How the steps of one run watch their workers: the app to ask, how often, and when to give up."""

    app: Any
    lost_after_s: float
    ping_every_s: float

    def ask(self, worker: str, task_id: str) -> bool | None:
        """Whether ``worker`` still runs ``task_id``: True, False (it answers but does not know the task: it
        restarted under the same name), or None (no answer)."""
        inspect = self.app.control.inspect(destination=[worker], timeout=min(2.0, self.ping_every_s))
        replies = inspect.query_task(task_id) or {}
        if worker not in replies:
            return None
        return task_id in (replies[worker] or {})


class WatchedResult:
    """A step's ``AsyncResult`` for dagster-celery's execution loop: ready when the task finished or when the
    worker that started it lost it; ``get`` names the step and the worker in every failure.

    A started step's worker is asked every ``ping_every_s`` whether it still runs the task. The step is lost
    when the worker has not answered for ``lost_after_s`` (its main process and pool are gone), or when it
    answers twice in a row without knowing the task (it was restarted under the same name, as a container
    with a restart policy is, and the step died with the old process)."""

    def __init__(
        self,
        result: Any,
        step_key: str,
        watch: WorkerWatch,
        started_on: Callable[[], tuple[str | None, int | None]] | None = None,
    ) -> None:
        self.result = result
        self.step_key = step_key
        self.watch = watch
        self.started_on = started_on
        """(worker, pool pid) from the run's event log, for a step that failed before this result saw it start."""
        self.worker: str | None = None
        self.pid: int | None = None
        self.lost: str | None = None
        self._last_answer: float | None = None
        self._last_ask = float("-inf")
        self._unknown = 0

    def _where(self) -> str:
        worker = self.worker or "an unknown celery worker (the step had not reported its start)"
        return f"celery worker {worker}" + (f" (pool pid {self.pid})" if self.pid else "")

    def _still_running(self) -> bool:
        now = time.monotonic()
        if self._last_answer is None:
            self._last_answer = now  # first seen running: its worker was alive then
        if now - self._last_ask >= self.watch.ping_every_s:
            self._last_ask = now
            knows = self.watch.ask(self.worker or "", self.result.id)
            if knows is not None:
                self._last_answer = time.monotonic()
            self._unknown = self._unknown + 1 if knows is False else 0
            if self._unknown >= 2:
                self.lost = "answers but no longer knows the task: it restarted, and the step died with its old process"
                return False
        if time.monotonic() - self._last_answer >= self.watch.lost_after_s:
            self.lost = (
                f"has not answered for {self.watch.lost_after_s:.0f} s: its main process is gone (killed, out of "
                "memory, host lost)"
            )
            return False
        return True

    def ready(self) -> bool:
        meta = self.result.backend.get_task_meta(self.result.id)
        state = meta.get("status")
        if state == "STARTED" and isinstance(meta.get("result"), dict):
            self.worker = meta["result"].get("hostname") or self.worker
            self.pid = meta["result"].get("pid") or self.pid
        if state in ("SUCCESS", "FAILURE", "REVOKED"):
            return True
        return state == "STARTED" and self.worker is not None and not self._still_running()

    def get(self) -> Any:
        if self.lost:
            raise CeleryWorkerLost(
                f'step "{self.step_key}" was running on {self._where()}, which {self.lost}. The step\'s outputs '
                "are uncommitted (manifest-last); the run's retry or a re-execution from failure redoes it."
            )
        try:
            return self.result.get()
        except Exception as error:
            from celery.exceptions import TaskRevokedError

            if isinstance(error, TaskRevokedError):
                raise
            if self.worker is None and self.started_on is not None:
                # the task's STARTED state was overwritten by its failure before a poll saw it: the worker's
                # own engine event and the step's start event in the run's log still name both
                self.worker, self.pid = self.started_on()
            raise CeleryStepFailed(
                f'step "{self.step_key}" failed on {self._where()}: {type(error).__name__}: {error}'
            ) from error

    def revoke(self) -> None:
        self.result.revoke()


def started_on_from_events(instance: Any, run_id: str, step_key: str) -> tuple[str | None, int | None]:
    """The celery worker (dagster-celery's ``Celery worker`` engine event) and the pool pid (the step's
    STEP_START) of ``step_key`` in the run's event log; None where absent."""
    from dagster import DagsterEventType

    worker = pid = None
    kinds = {DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_START}
    for entry in instance.all_logs(run_id, of_type=kinds):
        event = entry.dagster_event
        if event is None or event.step_key != step_key:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            pid = event.pid
            continue
        data = event.engine_event_data
        if data is not None and "Celery worker" in data.metadata:
            worker = str(data.metadata["Celery worker"].value)
    return worker, pid


def _seconds_from_env(name: str, default: float) -> float:
    value = float(os.environ.get(name, default))
    if value <= 0:
        raise ValueError(f"{name}={value}: must be positive")
    return value


def _celery_executor_class():
    from dagster_celery.core_execution_loop import core_celery_execution_loop
    from dagster_celery.executor import CeleryExecutor, _submit_task

    class WatchedCeleryExecutor(CeleryExecutor):
        """dagster-celery's executor whose step results watch the worker that runs them."""

        def __init__(self, *args: Any, lost_after_s: float, ping_every_s: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.lost_after_s = lost_after_s
            self.ping_every_s = ping_every_s

        def execute(self, plan_context, execution_plan):
            watches: dict[int, WorkerWatch] = {}

            def submit(app, plan_context, step, queue, priority, known_state):
                watch = watches.setdefault(id(app), WorkerWatch(app, self.lost_after_s, self.ping_every_s))
                result = _submit_task(app, plan_context, step, queue, priority, known_state)
                started_on = functools.partial(
                    started_on_from_events, plan_context.instance, plan_context.run_id, step.key
                )
                return WatchedResult(result, step.key, watch, started_on)

            return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)

    return WatchedCeleryExecutor


def facelake_celery_executor(config: dict[str, Any]) -> ExecutorDefinition:
    """dagster-celery's executor (same config schema) that fails a step whose worker is lost, by name."""
    from dagster_celery.executor import CELERY_CONFIG as SCHEMA
    from dagster_celery.executor import RetryMode

    lost_after_s = _seconds_from_env(LOST_WORKER_ENV, DEFAULT_LOST_WORKER_S)
    ping_every_s = _seconds_from_env(PING_ENV, DEFAULT_PING_S)

    @executor(name="celery", config_schema=SCHEMA, requirements=multiple_process_executor_requirements())
    def _celery(init_context):
        config = init_context.executor_config
        return _celery_executor_class()(
            retries=RetryMode.from_config(config["retries"]),
            broker=config.get("broker"),
            backend=config.get("backend"),
            config_source=config.get("config_source"),
            include=config.get("include"),
            lost_after_s=lost_after_s,
            ping_every_s=ping_every_s,
        )

    return _celery.configured(config, name="facelake_celery")


def executor_from_env() -> ExecutorDefinition:
    """``multiprocess`` (default), ``in_process``, or ``celery`` (configured by :func:`celery_config`)."""
    kind = os.environ.get("FACELAKE_EXECUTOR", "multiprocess")
    if kind == "in_process":
        return in_process_executor
    if kind == "celery":
        return facelake_celery_executor(celery_config())
    if kind != "multiprocess":
        raise ValueError(f"FACELAKE_EXECUTOR={kind!r}: expected multiprocess, in_process or celery")
    return MULTIPROCESS
