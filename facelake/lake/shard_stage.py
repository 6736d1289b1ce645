"""A resumable per-shard stage inside a partition: the shard is the unit of commit (DESIGN §3).

For each input shard ``i`` the stage writes ``<prefix>/<out_dir>/NNNNN.parquet`` and then, LAST, the shard
manifest ``NNNNN.done.json`` (rows, size, sha256 of the parquet, config hash, code version, input
fingerprint). A shard is done only if its ``.done.json`` exists and matches the current config hash, code
version and input fingerprint; anything else with its number is deleted and redone. A process killed after
k shards therefore resumes at shard k+1. The partition manifest, written by the caller after the stage,
lists the shard files in place.

Use inside :func:`facelake.lake.commit.materialize_partition` with ``keep=("<out_dir>/",)`` so that starting
an attempt does not delete the shards a killed attempt committed::

    def write(attempt):
        return run_shard_stage(attempt, shard_ids, process).written()

    materialize_partition(artifact, config, version, owner, write, keep=("shards/",))
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facelake.lake.commit import (
    Attempt,
    CommitOutcome,
    FileEntry,
    PartitionArtifact,
    Written,
    materialize_partition,
    utcnow,
)
from facelake.lake.errors import InputError
from facelake.lake.hashing import config_hash
from facelake.lake.storage import Storage
from facelake.lake.tables import write_parquet

DONE_SUFFIX = ".done.json"
_STAGE_FILE = re.compile(r"^(\d+)(\.parquet|\.done\.json)$")


def shard_name(shard_id: int) -> str:
    """``NNNNN``: the zero-padded name of a shard's files."""
    return f"{shard_id:05d}"


@dataclass
class ShardStageResult:
    """The committed shard files (relative to the partition prefix) and what this run did."""

    files: list[FileEntry]
    rows: int
    shards_done_now: list[int]
    shards_reused: list[int]
    removed: list[str]
    seconds: float

    def stats(self) -> dict[str, Any]:
        """Counts for the partition manifest's ``extra`` and the asset's metadata."""
        return {
            "shards": len(self.shards_done_now) + len(self.shards_reused),
            "shards_done_now": len(self.shards_done_now),
            "shards_reused": len(self.shards_reused),
            "rows": self.rows,
            "removed_uncommitted_files": len(self.removed),
            "stage_seconds": round(self.seconds, 3),
        }

    def written(self, extra: dict[str, Any] | None = None) -> Written:
        """A :class:`facelake.lake.commit.Written` for ``materialize_partition``'s write function."""
        return Written(self.files, rows=self.rows, extra={**self.stats(), **(extra or {})})


def _done_record(storage: Storage, uri: str) -> dict[str, Any] | None:
    try:
        record = storage.read_json(uri)
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _stage_files(storage: Storage, folder: str) -> dict[int, dict[str, str]]:
    """The stage's files under ``folder`` by shard id (suffix -> uri)."""
    by_id: dict[int, dict[str, str]] = {}
    for uri in storage.listdir(folder):
        match = _STAGE_FILE.match(uri.rstrip("/").rsplit("/", 1)[-1])
        if match:
            by_id.setdefault(int(match.group(1)), {})[match.group(2)] = uri
    return by_id


def run_shard_stage(
    attempt: Attempt,
    shard_ids: Iterable[int],
    process: Callable[[int], pa.Table],
    out_dir: str = "shards",
    *,
    config: dict[str, Any] | None = None,
    fingerprint: Callable[[int], str] | None = None,
    redo: bool = False,
    log: Callable[[str], None] | None = None,
    on_reused: Callable[[int], None] | None = None,
) -> ShardStageResult:
    """Run ``process(shard_id)`` for every shard not yet committed with this config, code and input.

    A shard is keyed by the hash of ``config`` (default: the attempt's whole config), the attempt's code
    version and ``fingerprint(shard_id)`` (optional: the shard's input, e.g. ``ImageShard.fingerprint``).
    Pass the stage's own settings as ``config`` and a fingerprint so that an upstream change (a grown
    blocklist) redoes only the shards whose input changed. ``redo`` ignores committed shards. Returns the
    parquet and ``.done.json`` entries of every requested shard, in shard order, for the partition manifest.
    ``on_reused(shard_id)`` is called for each committed shard that is reused (e.g. to advance progress).
    """
    started = time.perf_counter()
    ids = [int(i) for i in shard_ids]
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise ValueError(f"shard ids must be unique and non-negative, got {ids}")
    storage, prefix = attempt.artifact.storage, attempt.artifact.prefix
    folder = f"{prefix}/{out_dir.strip('/')}"
    existing = _stage_files(storage, folder)
    files: list[FileEntry] = []
    removed: list[str] = []
    done_now: list[int] = []
    reused: list[int] = []
    rows = 0
    cfg_hash = attempt.config_hash if config is None else config_hash(config)
    for shard_id in sorted(ids):
        expected = {
            "config_hash": cfg_hash,
            "code_version": attempt.code_version,
            "input_fingerprint": fingerprint(shard_id) if fingerprint else None,
        }
        parquet_uri = f"{folder}/{shard_name(shard_id)}.parquet"
        done_uri = f"{folder}/{shard_name(shard_id)}{DONE_SUFFIX}"
        present = existing.get(shard_id, {})
        record = None if redo or DONE_SUFFIX not in present else _done_record(storage, done_uri)
        if record is not None and _is_current(storage, record, expected, parquet_uri):
            reused.append(shard_id)
            done_bytes = storage.read_bytes(done_uri)
            if on_reused:
                on_reused(shard_id)
        else:
            for uri in present.values():
                storage.rm(uri, recursive=False)
                removed.append(storage.relative(uri, prefix))
            record, done_bytes = _process_shard(storage, shard_id, process, parquet_uri, done_uri, expected)
            done_now.append(shard_id)
            if log:
                log(f"{out_dir}/{shard_name(shard_id)}: {record['rows']} rows in {record['seconds']} s")
        rows += int(record["rows"])
        files.append(
            FileEntry(
                storage.relative(parquet_uri, prefix), int(record["size"]), record["sha256"], record["rows"]
            )
        )
        files.append(
            FileEntry(
                storage.relative(done_uri, prefix), len(done_bytes), hashlib.sha256(done_bytes).hexdigest()
            )
        )
    return ShardStageResult(files, rows, done_now, reused, removed, time.perf_counter() - started)


def _process_shard(
    storage: Storage,
    shard_id: int,
    process: Callable[[int], pa.Table],
    parquet_uri: str,
    done_uri: str,
    expected: dict[str, Any],
) -> tuple[dict[str, Any], bytes]:
    """Process one shard, write its parquet, then LAST its shard manifest; returns the manifest."""
    started = time.perf_counter()
    table = process(shard_id)
    if not isinstance(table, pa.Table):
        raise TypeError(f"shard {shard_id}: process returned {type(table).__name__}, not a pyarrow Table")
    record = write_parquet(storage, parquet_uri, table) | expected
    record |= {
        "shard_id": shard_id,
        "seconds": round(time.perf_counter() - started, 3),
        "created_at": utcnow().isoformat(),
    }
    done_bytes = json.dumps(record, indent=2, sort_keys=True).encode()
    storage.write_bytes(done_uri, done_bytes)
    return record, done_bytes


def _is_current(storage: Storage, record: dict[str, Any], expected: dict[str, Any], parquet_uri: str) -> bool:
    """A shard manifest made with the expected config, code and input, whose parquet is there whole."""
    if any(record.get(k) != v for k, v in expected.items()):
        return False
    try:
        return storage.size(parquet_uri) == record.get("size")
    except FileNotFoundError:
        return False


def read_stage_table(
    storage: Storage, artifact: PartitionArtifact, out_dir: str = "shards", columns: list[str] | None = None
) -> pa.Table:
    """The committed shard parquets the partition manifest lists under ``out_dir``, concatenated in order."""
    manifest = artifact.require_manifest()
    folder = out_dir.strip("/") + "/"
    paths = sorted(
        f.path for f in manifest.files if f.path.startswith(folder) and f.path.endswith(".parquet")
    )
    tables = []
    for path in paths:
        uri = artifact.uri(path)
        try:
            with storage.open(uri, "rb") as handle:
                tables.append(pq.read_table(handle, columns=columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(uri, f"unreadable stage shard parquet: {exc}") from exc
    if not tables:
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowInvalid as exc:
        raise InputError(artifact.prefix, f"stage shards have different schemas: {exc}") from exc


def commit_shard_stage(
    artifact: PartitionArtifact,
    run_config: dict[str, Any],
    code_version: str,
    owner: str,
    shards: dict[int, Any],
    process: Callable[[int], pa.Table],
    stage_config: dict[str, Any],
    *,
    force: bool = False,
    extra: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    on_reused: Callable[[int], None] | None = None,
) -> CommitOutcome:
    """Run ``process`` per input shard (committed shards are reused) and commit the partition manifest-last.

    ``shards`` maps shard id to an input shard with a ``fingerprint`` (e.g. a webdataset ``ImageShard``);
    ``log`` gets a line per processed shard, ``on_reused`` each reused shard id.
    """

    def write(attempt: Attempt) -> Written:
        result = run_shard_stage(
            attempt,
            sorted(shards),
            process,
            config=stage_config,
            fingerprint=lambda i: shards[i].fingerprint,
            log=log,
            on_reused=on_reused,
        )
        return result.written(extra={**result.stats(), **(extra or {})})

    return materialize_partition(
        artifact, run_config, code_version, owner, write, force=force, keep=("shards/",)
    )
