"""One executor per run (Dagster's rule): local multiprocess by default, celery in production.

Per-step routing is by op tags (``dagster-celery/queue``: ``cpu`` or ``gpu``) and pools (``gpu``), so asset
code never changes between a laptop and a GPU cluster. Select with ``FACELAKE_EXECUTOR``.

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

import os
from pathlib import Path
from typing import Any

import yaml
from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

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


def executor_from_env() -> ExecutorDefinition:
    """``multiprocess`` (default), ``in_process``, or ``celery`` (configured by :func:`celery_config`)."""
    kind = os.environ.get("FACELAKE_EXECUTOR", "multiprocess")
    if kind == "in_process":
        return in_process_executor
    if kind == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_config(), name="facelake_celery")
    if kind != "multiprocess":
        raise ValueError(f"FACELAKE_EXECUTOR={kind!r}: expected multiprocess, in_process or celery")
    return MULTIPROCESS
