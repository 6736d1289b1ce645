"""One executor per run (Dagster's rule): local multiprocess by default, celery in production.

Per-step routing is by op tags (``dagster-celery/queue``: ``cpu`` or ``gpu``) and pools (``gpu``), so asset
code never changes between a laptop and a GPU cluster. Select with ``FACELAKE_EXECUTOR``.
"""

from __future__ import annotations

import os

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

MULTIPROCESS = multiprocess_executor.configured(
    {
        "max_concurrent": 2,
        "tag_concurrency_limits": [{"key": "facelake/network", "value": "download", "limit": 1}],
    },
    name="facelake_multiprocess",
)


def executor_from_env() -> ExecutorDefinition:
    """``multiprocess`` (default), ``in_process``, or ``celery`` (broker from FACELAKE_CELERY_BROKER)."""
    kind = os.environ.get("FACELAKE_EXECUTOR", "multiprocess")
    if kind == "in_process":
        return in_process_executor
    if kind == "celery":
        from dagster_celery import celery_executor

        broker = os.environ.get("FACELAKE_CELERY_BROKER", "redis://127.0.0.1:6379/0")
        return celery_executor.configured({"broker": broker, "backend": broker}, name="facelake_celery")
    if kind != "multiprocess":
        raise ValueError(f"FACELAKE_EXECUTOR={kind!r}: expected multiprocess, in_process or celery")
    return MULTIPROCESS
