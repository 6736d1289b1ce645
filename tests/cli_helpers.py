"""Run this code location's Dagster CLIs in subprocesses and read back what their instance recorded.

Each CLI gets its own ``DAGSTER_HOME`` (a ``dagster.yaml`` copied from ``deploy/``), the test process's
environment (``FACELAKE_CONFIG`` included) and the repository on ``PYTHONPATH``; paths are computed from
this file, so the tests run from a clean clone without the project being installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    Definitions,
    EventLogRecord,
)

from facelake.settings import load_settings
from synthetic.image_server import ImageServer
from synthetic.world import LaionWorld, WorldSpec, build_laion_world

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
DEPLOY_DIR = REPO_ROOT / "deploy"
CODE_LOCATION = ["-m", "dagster_project"]
PART = "00000"
INPUTS = ["laion_face_ids", "laion_face_optout"]
PART_ASSETS = ["laion_face_meta", "laion_face_images", "laion_face_detections"]
CLI_TIMEOUT_S = 300
IN_PROCESS = {"FACELAKE_EXECUTOR": "in_process"}
"""Run a CLI's steps in the CLI's process: saves a code-location import per step where that is not tested."""

STATUS_OF_KIND = {
    "face": "success",
    "slow": "success",
    "not_found": "failed_to_download",
    "noai": "failed_to_download",
    "not_image": "failed_to_resize",
    "blocked_id": "opted_out",
    "blocked_url": "opted_out",
}
"""The download status each kind of URL of the synthetic world must end in (slow URLs answer in time)."""


def expected_download_counts(world: Any) -> dict[str, int]:
    """Exact counts by img2dataset status that a correct download of the world's part 00000 reports."""
    counts: dict[str, int] = {}
    for kind, n in world.kind_counts().items():
        status = STATUS_OF_KIND[kind]
        counts[status] = counts.get(status, 0) + n
    return counts


# --- Dagster homes and subprocesses ---------------------------------------------------------------------


def make_dagster_home(path: Path, template: str = "dagster.local.yaml") -> Path:
    """A DAGSTER_HOME whose ``dagster.yaml`` is ``deploy/<template>``."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEPLOY_DIR / template, path / "dagster.yaml")
    return path


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment plus DAGSTER_HOME, the repository on PYTHONPATH, and ``extra``."""
    env = os.environ.copy()
    python_path = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(DAGSTER_HOME=str(home), PYTHONPATH=os.pathsep.join(python_path), **extra)
    return env


def dagster_command(*args: str) -> list[str]:
    """``dagster <args>`` from this interpreter's virtual environment."""
    return [str(BIN_DIR / "dagster"), *args]


def materialize_command(assets: Sequence[str], partition: str | None = None) -> list[str]:
    """``dagster asset materialize -m dagster_project --select A,B [--partition KEY]``."""
    command = dagster_command("asset", "materialize", *CODE_LOCATION, "--select", ",".join(assets))
    return command + (["--partition", partition] if partition else [])


@dataclass
class CliResult:
    """Exit status and combined stdout/stderr of one CLI run."""

    command: list[str]
    returncode: int
    output: str

    def assert_ok(self) -> None:
        assert self.returncode == 0, (
            f"{' '.join(self.command)} exited {self.returncode}:\n{self.output[-6000:]}"
        )


def run_cli(command: list[str], env: dict[str, str], timeout_s: float = CLI_TIMEOUT_S) -> CliResult:
    """Run a CLI to completion from the repository root; stdout and stderr are captured together."""
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
    )
    return CliResult(command, done.returncode, done.stdout)


def materialize(
    assets: Sequence[str], env: dict[str, str], partition: str | None = None, check: bool = True
) -> CliResult:
    """``dagster asset materialize`` in a subprocess; with ``check``, a non-zero exit fails (with output)."""
    result = run_cli(materialize_command(assets, partition), env)
    if check:
        result.assert_ok()
    return result


def start_process(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a long-running CLI in its own process group, its output going to ``log``."""
    with log.open("wb") as handle:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process and its children (its process group), then SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children that outlived their parent
    process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


# --- worlds, in-process runs and the instance's records ----------------------------------------------


@contextlib.contextmanager
def served_world(base: Path, spec: WorldSpec | None = None) -> Iterator[LaionWorld]:
    """A LAION-Face world served from this process, with FACELAKE_CONFIG pointing at it while in use.

    Like the ``laion_world`` fixture, but usable at module scope and with a WorldSpec of one's own.
    """
    with pytest.MonkeyPatch.context() as env, ImageServer() as server:
        env.delenv("FACELAKE_ROOT", raising=False)
        world = build_laion_world(base, server, spec)
        env.setenv("FACELAKE_CONFIG", str(world.config_path))
        yield world


def world_definitions() -> Definitions:
    """The code location's definitions for the settings in force (``$FACELAKE_CONFIG``)."""
    # Imported here: importing the module builds the default ``defs`` from whatever config is in force.
    from dagster_project.definitions import build_definitions

    return build_definitions(load_settings())


def materialize_in_process(
    defs: Definitions,
    assets: Sequence[str],
    instance: DagsterInstance | None = None,
    partition: str | None = None,
    raise_on_error: bool = True,
) -> Any:
    """``dagster.materialize`` of the named assets of ``defs`` with its resources (in-process executor)."""
    return dagster.materialize(
        list(defs.assets or []),
        resources=defs.resources,
        instance=instance,
        partition_key=partition,
        selection=[AssetKey(a) for a in assets],
        raise_on_error=raise_on_error,
    )


def materialize_part_in_process(defs: Definitions, instance: DagsterInstance, partition: str = PART) -> str:
    """The inputs, then ``laion_face_part_job`` for ``partition``, on ``instance``; the part run's id."""
    assert materialize_in_process(defs, INPUTS, instance).success
    part_run = defs.resolve_job_def("laion_face_part_job").execute_in_process(
        partition_key=partition, instance=instance
    )
    assert part_run.success
    return part_run.run_id


def step_failure_text(result: Any) -> str:
    """Every message (with causes) of the step failures of an in-process run."""
    lines = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None:
                lines.append(error.message)
                error = error.cause
    return "\n".join(lines)


def materialization_records(
    instance: DagsterInstance, asset: str, partition: str | None = None
) -> list[EventLogRecord]:
    """The asset's (partition's) materialization records on the instance, newest first."""
    records_filter = AssetRecordsFilter(
        asset_key=AssetKey(asset), asset_partitions=[partition] if partition else None
    )
    return list(instance.fetch_materializations(records_filter, limit=100).records)


def metadata_values(materialization: AssetMaterialization) -> dict[str, Any]:
    """The materialization's metadata as plain Python values."""
    return {key: value.value for key, value in materialization.metadata.items()}


def data_version(materialization: AssetMaterialization) -> str | None:
    """The data version the asset reported for this materialization."""
    return materialization.tags.get("dagster/data_version") if materialization.tags else None
