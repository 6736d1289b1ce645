"""The celery executor's event-log reader: which worker and pool process ran a step (no broker needed)."""

from __future__ import annotations

import os

from dagster import DagsterInstance, job, op

from dagster_project.executors import started_on_from_events


@op
def hello() -> int:
    return 1


@job
def one_step():
    hello()


def test_started_on_reads_the_step_start_pid_and_skips_other_steps() -> None:
    with DagsterInstance.ephemeral() as instance:
        result = one_step.execute_in_process(instance=instance)
        assert result.success
        # in process: the step ran in this pid; no celery engine event, so no worker
        assert started_on_from_events(instance, result.run_id, "hello") == (None, os.getpid())
        assert started_on_from_events(instance, result.run_id, "no_such_step") == (None, None)
