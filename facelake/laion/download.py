"""The LAION-Face download stage: img2dataset on one part, with every sample accounted for.

Flow for a part (DESIGN §3, §5)::

    clean_uncommitted_shards(storage, shards)            # a crash leaves shards without _stats.json
    run_img2dataset(storage, part_parquet, shards, opts)  # "incremental": skips committed shards
    retry_failed_samples(storage, shards, retry_parquet, opts)  # failed ids only, into NEW shards ("extend")
    shards_ = committed_shards(storage, shards)
    resolved = resolve_samples(storage, shards_, input_table, opted_out)
    summary = summarize(resolved, shards_, seconds)

img2dataset runs in a subprocess (:mod:`facelake.laion.download_runner`) whose environment carries the
storage's S3 endpoint and credentials, so its own worker processes reach the same S3 as the caller.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facelake.laion.download_accounting import (
    OPTED_OUT,
    SUCCESS,
    failed_samples,
    final_attempts,
    is_permanent_failure,
    resolve_samples,
    summarize,
)
from facelake.laion.download_options import SAMPLE_ID, DownloadOptions
from facelake.laion.download_progress import ShardWatcher, expected_shards
from facelake.laion.download_runner import PARENT_PID_ENV
from facelake.laion.download_shards import (
    TMP_FOLDER,
    DownloadIntegrityError,
    Shard,
    check_shards_folder,
    clean_uncommitted_shards,
    committed_shards,
)
from facelake.lake.errors import FacelakeError, InputError
from facelake.lake.progress import Report
from facelake.lake.storage import Storage

__all__ = [
    "OPTED_OUT",
    "SAMPLE_ID",
    "SUCCESS",
    "DownloadError",
    "DownloadIntegrityError",
    "DownloadOptions",
    "DownloadRun",
    "Shard",
    "check_download_input",
    "clean_uncommitted_shards",
    "committed_shards",
    "failed_samples",
    "final_attempts",
    "is_permanent_failure",
    "resolve_samples",
    "retry_failed_samples",
    "run_img2dataset",
    "summarize",
    "write_download_input",
]

log = logging.getLogger(__name__)
Mode = Literal["incremental", "extend"]
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
_QUIET_ENV = {
    "PYTHONUNBUFFERED": "1",
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TQDM_DISABLE": "1",
}


class DownloadError(FacelakeError):
    """img2dataset itself failed (not a sample: those end up with a failure status)."""


@dataclass(frozen=True)
class DownloadRun:
    """What one img2dataset run took, and the end of what it printed."""

    seconds: float
    output_tail: list[str]


def _subprocess_env(storage: Storage) -> dict[str, str]:
    with storage.subprocess_env():
        env = dict(os.environ)
    pythonpath = [_PROJECT_ROOT, *filter(None, [env.get("PYTHONPATH")])]
    return env | _QUIET_ENV | {"PYTHONPATH": os.pathsep.join(pythonpath), PARENT_PID_ENV: str(os.getpid())}


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the runner (it kills its workers), then SIGKILL if it lingers."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def check_download_input(storage: Storage, uri: str, options: DownloadOptions) -> pa.Schema:
    """The schema of an img2dataset input parquet, refused unless it has the columns the download needs."""
    if not storage.exists(uri):
        raise InputError(uri, "download input parquet not found")
    try:
        with storage.open(uri, "rb") as handle:
            schema = pq.read_schema(handle)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(uri, f"not a readable parquet file: {exc}") from exc
    missing = [c for c in options.input_columns if c not in schema.names]
    if missing:
        raise InputError(uri, f"missing column(s) {missing} (has {schema.names})")
    if not pa.types.is_integer(schema.field(SAMPLE_ID).type):
        raise InputError(uri, f"{SAMPLE_ID} must be an integer column, is {schema.field(SAMPLE_ID).type}")
    return schema


def run_img2dataset(
    storage: Storage,
    input_parquet_uri: str,
    shards_folder_uri: str,
    options: DownloadOptions,
    mode: Mode = "incremental",
    on_output: Callable[[str], None] | None = None,
    progress: Report | None = None,
) -> DownloadRun:
    """Download the URLs of a laion-schema parquet into webdataset shards with img2dataset.

    ``mode="incremental"`` skips shards whose ``_stats.json`` exists (a rerun finishes a part);
    ``mode="extend"`` numbers new shards after the highest existing one (retries of failed samples).
    The shards folder must hold img2dataset's files only. Lines img2dataset prints go to ``on_output``
    (default: this module's logger at DEBUG); ``progress`` gets finished shards, rate and ETA at least every
    5 % or 30 s. Raises :class:`DownloadError` if img2dataset exits non-zero.
    """
    if mode not in ("incremental", "extend"):
        raise ValueError(f"mode must be 'incremental' or 'extend', got {mode!r}")
    check_download_input(storage, input_parquet_uri, options)
    check_shards_folder(storage, shards_folder_uri)
    kwargs = {
        "url_list": input_parquet_uri,
        "output_folder": shards_folder_uri.rstrip("/"),
        "incremental_mode": mode,
        **options.img2dataset_kwargs(),
    }
    emit = on_output or (lambda line: log.debug("img2dataset: %s", line))
    tail: deque[str] = deque(maxlen=40)
    new_shards = expected_shards(storage, input_parquet_uri, options.number_sample_per_shard)
    watcher = ShardWatcher(storage, shards_folder_uri, new_shards, progress, extend=mode == "extend")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "facelake.laion.download_runner"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_subprocess_env(storage),
        text=True,
        errors="replace",
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(kwargs))
        process.stdin.close()
        with watcher:
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                emit(line)
            returncode = process.wait()
    except BaseException:
        _stop(process)
        raise
    seconds = time.perf_counter() - started
    if returncode != 0:
        raise DownloadError(
            f"img2dataset exited with {returncode} on {input_parquet_uri} -> {shards_folder_uri}:\n"
            + "\n".join(tail)
        )
    storage.rm(f"{shards_folder_uri.rstrip('/')}/{TMP_FOLDER}")
    return DownloadRun(seconds=seconds, output_tail=list(tail))


def write_download_input(storage: Storage, table: pa.Table, uri: str) -> None:
    """Write an img2dataset input parquet (e.g. the failed samples of a retry)."""
    with storage.open(uri, "wb") as handle:
        pq.write_table(table, handle)


def retry_failed_samples(
    storage: Storage,
    shards_folder_uri: str,
    retry_input_uri: str,
    options: DownloadOptions,
    include_permanent: bool = False,
    on_output: Callable[[str], None] | None = None,
    exclude_ids: pa.Array | None = None,
    progress: Report | None = None,
) -> int:
    """Re-request only the samples whose final status is a failure, into new shards ("extend" mode).

    Failures a retry cannot fix (404, X-Robots-Tag, undecodable bytes) are skipped unless
    ``include_permanent``. The failed rows are written to ``retry_input_uri`` (outside the shards folder).
    ``exclude_ids`` (e.g. samples opted out since the first download) are never re-requested.
    Returns how many samples were retried (0: nothing to do, img2dataset not started).
    """
    shards_folder = shards_folder_uri.rstrip("/")
    if retry_input_uri.startswith(shards_folder + "/"):
        raise ValueError(f"{retry_input_uri}: the retry input must live outside the shards folder")
    failed = failed_samples(storage, committed_shards(storage, shards_folder), options, include_permanent)
    if exclude_ids is not None and len(exclude_ids):
        failed = failed.filter(pc.invert(pc.is_in(failed[SAMPLE_ID], value_set=exclude_ids)))
    if failed.num_rows == 0:
        return 0
    write_download_input(storage, failed, retry_input_uri)
    run_img2dataset(
        storage,
        retry_input_uri,
        shards_folder,
        options,
        mode="extend",
        on_output=on_output,
        progress=progress,
    )
    return failed.num_rows
